"""Input validation for datalists.

:func:`check_cases` opens every file of every case and raises a single ``ValueError`` that lists every bad
case with everything that is wrong with it, so a user fixes a dataset in one pass instead of one crash per
training run. Files are opened with nibabel, the library behind the ``NibabelReader`` that the loaders
document (see :mod:`transrisk_components.data.iseg`), so shapes and affines are compared exactly as the
training pipeline will see them.

Two costs, two policies. Header checks (files exist and are readable, one shape and affine per case) read a
few hundred bytes per file and run every time. Voxel checks (NaN/Inf, all-zero images, label values) read
every voxel -- about 9 M per FeTS volume -- so a file whose voxels passed is recorded in a JSON cache by its
identity (path, size, modification time) and not read again until the file changes. Under DDP the checks
run on rank 0 and every rank raises the same error.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from transrisk_components.data.labels import format_values, spatial_shape, unexpected_values
from transrisk_components.data.registry import DatasetSpec, get_dataset
from transrisk_components.utils.distributed import broadcast_from_rank0, is_rank0
from transrisk_components.utils.io import atomic_write_text

__all__ = ["VoxelCheckCache", "check_cases"]

logger = logging.getLogger(__name__)

#: Affines of one case may differ by this much (mm / direction cosines) and still count as equal.
AFFINE_ATOL = 1e-3

#: Known causes of unexpected label values, keyed by (dataset name, value).
_LABEL_HINTS: dict[tuple[str, int], str] = {
    ("fets", 3): "3 is enhancing tumour in the BraTS 2023 / MSD relabelling; FeTS2021 uses 4",
}


def _resolve(dataset: DatasetSpec | str) -> DatasetSpec:
    return get_dataset(dataset) if isinstance(dataset, str) else dataset


def _case_paths(case: Mapping) -> tuple[list[str], str | None]:
    images = case.get("image")
    if isinstance(images, (str, Path)):
        images = [images]
    if not images:
        raise KeyError("no 'image' paths")
    label = case.get("label")
    return [str(p) for p in images], None if label is None else str(label)


class VoxelCheckCache:
    """Files whose voxels passed a check, by identity; a changed file (size or mtime) is checked again.

    Stored as JSON ``{"version": 1, "passed": {path: [check, size, mtime_ns, ...]}}`` where ``check`` names
    what was verified (``"image"``, or ``"label:<dataset>:<allowed values>"``) and an Analyze ``.hdr``
    adds the size and mtime of its ``.img``. Only passes are stored, so a bad file is reported on every run.

    Args:
        path: the JSON file; ``None`` keeps nothing (every voxel is checked every time).
    """

    VERSION = 1

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = None if path is None else Path(path)
        self.passed: dict[str, list] = {}
        self._dirty = False
        if self.path is not None and self.path.is_file():
            try:
                record = json.loads(self.path.read_text())
                if record.get("version") == self.VERSION:
                    self.passed = dict(record["passed"])
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                logger.warning(
                    "ignoring unreadable input-check cache %s (%s): every voxel is checked again", self.path, err
                )

    @staticmethod
    def identity(path: str, check: str) -> list:
        """``[check, size, mtime_ns]`` of ``path`` (plus those of the ``.img`` of an Analyze ``.hdr``)."""
        files = [path, str(Path(path).with_suffix(".img"))] if path.endswith(".hdr") else [path]
        ident: list = [check]
        for f in files:
            stat = os.stat(f)
            ident += [stat.st_size, stat.st_mtime_ns]
        return ident

    def has_passed(self, path: str, check: str) -> bool:
        """Whether ``path``, unchanged since, passed ``check`` before."""
        return self.passed.get(path) == self.identity(path, check)

    def record_pass(self, path: str, check: str) -> None:
        """Remember that ``path`` as it is now passed ``check``."""
        self.passed[path] = self.identity(path, check)
        self._dirty = True

    def save(self) -> None:
        """Write the cache atomically if anything was added (nothing without a ``path``)."""
        if self.path is not None and self._dirty:
            atomic_write_text(self.path, json.dumps({"version": self.VERSION, "passed": self.passed}))
            self._dirty = False


def _read_voxels(path: str, image: nib.spatialimages.SpatialImage, problems: list[str]) -> np.ndarray | None:
    """The voxel array of an opened file, or ``None`` with the reason appended to ``problems``.

    nibabel reads only the header on ``load``; a truncated or corrupt data block (e.g. a cut-off ``.nii.gz``,
    which raises a bare ``EOFError``) shows only here.
    """
    try:
        return np.asanyarray(image.dataobj)
    except Exception as err:  # zlib, gzip, EOF and nibabel errors alike mean "cannot read the voxels"
        problems.append(f"cannot read the voxels of {path} ({type(err).__name__}: {err}); the file is truncated or corrupt")
        return None


def _check_case(case: Mapping, spec: DatasetSpec, cache: VoxelCheckCache | None) -> list[str]:
    """Every problem found in one case, as human-readable strings (empty when the case is fine).

    Headers always; voxels (when ``cache`` is given) of the files that have not passed before.
    """
    try:
        images, label = _case_paths(case)
    except KeyError as err:
        return [str(err.args[0])]
    paths = images + ([label] if label is not None else [])
    problems = [f"missing file {p}" for p in paths if not Path(p).is_file()]
    problems += [
        f"missing file {Path(p).with_suffix('.img')} (data of Analyze header {p})"
        for p in paths
        if p.endswith(".hdr") and Path(p).is_file() and not Path(p).with_suffix(".img").is_file()
    ]
    if problems:
        return problems
    loaded = {}
    for p in paths:
        try:
            loaded[p] = nib.load(p)
        except Exception as err:  # nibabel raises several unrelated types for unreadable files
            problems.append(f"cannot read {p} ({type(err).__name__}: {err}); the file is truncated or corrupt")
    if problems:
        return problems

    ref_path, ref = images[0], loaded[images[0]]
    for p in paths[1:]:
        if spatial_shape(loaded[p].shape) != spatial_shape(ref.shape):
            problems.append(
                f"shape {spatial_shape(loaded[p].shape)} of {p} differs from {spatial_shape(ref.shape)} of {ref_path}"
            )
        elif not np.allclose(loaded[p].affine, ref.affine, atol=AFFINE_ATOL):
            problems.append(f"affine of {p} differs from that of {ref_path}")
    if cache is None:
        return problems

    for p in images:
        if cache.has_passed(p, "image"):
            continue
        found: list[str] = []
        data = _read_voxels(p, loaded[p], found)
        if data is None:
            problems += found
            continue
        if np.issubdtype(data.dtype, np.floating):
            n_bad = int(data.size - np.count_nonzero(np.isfinite(data)))
            if n_bad:
                found.append(f"image {p} has {n_bad} NaN/Inf voxels")
        if not np.any(data):
            found.append(f"image {p} is all zero")
        if not found:
            cache.record_pass(p, "image")
        problems += found
    label_check = f"label:{spec.name}:{list(spec.label_values)}"
    labels = None
    if label is not None and not cache.has_passed(label, label_check):
        labels = _read_voxels(label, loaded[label], problems)
    if labels is not None:
        bad = unexpected_values(labels, spec.label_values)
        if bad.size:
            keys = [(spec.name, int(v)) for v in bad if float(v).is_integer()]
            hints = [_LABEL_HINTS[key] for key in keys if key in _LABEL_HINTS]
            hint = f" ({'; '.join(hints)})" if hints else ""
            problems.append(
                f"label {label} has values {format_values(bad)} outside {list(spec.label_values)}{hint}"
            )
        else:
            cache.record_pass(label, label_check)
    return problems


def check_cases(
    datalist: Sequence[Mapping],
    dataset: DatasetSpec | str,
    voxels: bool = True,
    cache_path: str | os.PathLike | None = None,
) -> None:
    """Validate every case of a datalist before any training starts.

    Checks per case: every image and label file exists (for Analyze ``.hdr`` also its ``.img``) and is
    readable; all modalities and the label share one spatial shape (trailing singleton dimensions
    ignored) and one affine (within :data:`AFFINE_ATOL`); and, when ``voxels`` is true, no image holds
    NaN/Inf voxels or is entirely zero, and the label holds only the dataset's raw label values.

    Under DDP, rank 0 checks and every rank raises the same error (all ranks must call this).

    Args:
        datalist: cases as returned by a dataset's ``datalist`` function: dicts with ``case_id``,
            ``image`` (list of paths) and ``label`` (path or ``None`` for unlabelled cases).
        dataset: a :class:`~transrisk_components.data.registry.DatasetSpec` or its name (``"fets"``,
            ``"iseg"``); supplies the allowed raw label values.
        voxels: also check voxel data; headers alone when false.
        cache_path: a :class:`VoxelCheckCache` JSON file: voxels of files that passed before and have not
            changed since are not read again. ``None``: every voxel is read on every call.

    Raises:
        ValueError: ``datalist`` is empty, or at least one case is bad. One error lists every bad case,
            one line per case, with every problem found.
    """
    spec = _resolve(dataset)
    if len(datalist) == 0:
        raise ValueError(f"empty datalist: no {spec.name} cases to check")
    message = None
    if is_rank0():
        cache = VoxelCheckCache(cache_path) if voxels else None
        report = []
        for index, case in enumerate(datalist):
            problems = _check_case(case, spec, cache)
            if problems:
                report.append(f"  {case.get('case_id', f'case #{index}')}: " + "; ".join(problems))
        if cache is not None:
            cache.save()
        if report:
            message = f"{len(report)} of {len(datalist)} {spec.name} cases failed input checks:\n" + "\n".join(report)
    message = broadcast_from_rank0(message)
    if message is not None:
        raise ValueError(message)
