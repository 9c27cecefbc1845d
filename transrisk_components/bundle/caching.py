"""How many cases a ``CacheDataset`` may keep in memory within a budget of gigabytes.

``CacheDataset`` keeps the output of the deterministic head of the transform chain (load, normalise, map
labels, ... up to the first random transform) for its first ``cache_num`` cases; the rest are loaded on every
epoch. :func:`cache_num_within_budget` picks ``cache_num`` so the cache stays within ``cache_gb``:

1. bytes per voxel of the cached item: the deterministic head is run on the first case and its arrays
   are counted (exact for the pipeline at hand, whatever dtypes, crops or index arrays it keeps);
2. voxels per case: from each case's image header (a few hundred bytes read per case);
3. the first cases whose estimated bytes (voxels x bytes per voxel) add up to at most ``cache_gb`` are cached.

Worked figures are in the bundle READMEs ("Memory").
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import Compose, RandomizableTrait, Transform

__all__ = ["cache_num_within_budget", "cached_bytes", "header_voxels"]

logger = logging.getLogger(__name__)


def cached_bytes(item: Any) -> int:
    """Bytes of the arrays in ``item`` (tensors and numpy arrays, inside dicts / lists, counted once each)."""
    if isinstance(item, torch.Tensor):
        return item.numel() * item.element_size()
    if isinstance(item, np.ndarray):
        return int(item.nbytes)
    if isinstance(item, Mapping):
        return sum(cached_bytes(v) for v in item.values())
    if isinstance(item, (list, tuple)):
        return sum(cached_bytes(v) for v in item)
    return 0


def header_voxels(case: Mapping) -> int:
    """Spatial voxels of a case's (first) image, from its header: ``X * Y * Z``."""
    image = case["image"]
    path = image[0] if isinstance(image, (list, tuple)) else image
    return int(np.prod(nib.load(str(path)).shape[:3]))


def cache_num_within_budget(data: Sequence[Mapping], transform: Compose, cache_gb: float) -> int:
    """Number of leading cases of ``data`` whose cached items fit in ``cache_gb`` (for ``CacheDataset``).

    Args:
        data: the dataset's datalist (dicts with an ``"image"`` path or list of paths).
        transform: the dataset's transform chain; its head up to the first random transform is what
            ``CacheDataset`` keeps.
        cache_gb: memory budget of this dataset's cache, GB (1e9 bytes), per process. ``0`` caches nothing.

    Returns:
        ``cache_num`` in ``[0, len(data)]``.

    Raises:
        ValueError: ``cache_gb`` is negative.
    """
    if cache_gb < 0:
        raise ValueError(f"cache_gb must be >= 0, got {cache_gb}")
    if cache_gb == 0 or len(data) == 0:
        return 0
    first_random = transform.get_index_of_first(
        lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform)
    )
    first = transform(dict(data[0]), end=first_random, threading=True)
    per_voxel = cached_bytes(first) / header_voxels(data[0])
    budget, total, count = cache_gb * 1e9, 0.0, 0
    for case in data:
        total += per_voxel * header_voxels(case)
        if total > budget:
            break
        count += 1
    logger.info(
        "cache budget %.1f GB: %d of %d cases cached (%.1f bytes per voxel, %.0f MB for the first case)",
        cache_gb,
        count,
        len(data),
        per_voxel,
        cached_bytes(first) / 1e6,
    )
    return count
