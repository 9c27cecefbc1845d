"""How many cases a ``CacheDataset`` may keep in memory within a budget of gigabytes.

``CacheDataset`` keeps the output of the deterministic head of the transform chain (load, map labels, crop
to the brain, foreground / background indices, normalise) for its first ``cache_num`` cases; the rest are
loaded every epoch. :func:`cache_num_within_budget` picks ``cache_num`` from the image headers alone, so
a stage that is skipped reads no voxels: each case is estimated at ``bytes_per_voxel`` times its header's
voxel count, and the leading cases that add up to at most ``cache_gb`` are cached.

``bytes_per_voxel`` is a property of the pipeline, measured with :func:`cached_bytes` on a full-size case
(``python scripts/benchmark.py scale`` prints it): the bundles' source pipeline keeps a float32 image and a
uint8 label of the brain's bounding box plus one int64 index per brain voxel: 4.07 bytes per header voxel
on a 240x240x155 FeTS phantom case (36 MB), 3.17 on a 144x192x256 iSeg one (22 MB); the configs use 4.5
and 3.5. Worked figures are in the bundle READMEs ("Memory").
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import torch

__all__ = ["cache_num_within_budget", "cached_bytes", "header_voxels"]

logger = logging.getLogger(__name__)


def cached_bytes(item: Any) -> int:
    """Bytes of the arrays in ``item`` (tensors and numpy arrays, inside dicts / lists)."""
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


def cache_num_within_budget(data: Sequence[Mapping], cache_gb: float, bytes_per_voxel: float) -> int:
    """Number of leading cases of ``data`` whose cached items fit in ``cache_gb`` (``CacheDataset(cache_num=...)``).

    Args:
        data: the dataset's datalist (dicts with an ``"image"`` path or list of paths).
        cache_gb: memory budget of this dataset's cache, GB (1e9 bytes), per process. ``0`` caches nothing.
        bytes_per_voxel: cached bytes per voxel of a case's header grid (see the module docstring).

    Returns:
        ``cache_num`` in ``[0, len(data)]``.

    Raises:
        ValueError: ``cache_gb`` is negative or ``bytes_per_voxel`` is not positive.
    """
    if cache_gb < 0 or bytes_per_voxel <= 0:
        raise ValueError(f"need cache_gb >= 0 and bytes_per_voxel > 0, got {cache_gb} and {bytes_per_voxel}")
    budget, total, count = cache_gb * 1e9, 0.0, 0
    for case in data:
        total += bytes_per_voxel * header_voxels(case)
        if total > budget:
            break
        count += 1
    logger.info("cache budget %.1f GB: %d of %d cases cached (estimated %.0f MB)", cache_gb, count, len(data),
                min(total, budget) / 1e6)
    return count
