"""Input validation for datalists.

:func:`check_cases` opens every file of every case once and raises a single ``ValueError`` that lists
every bad case with everything that is wrong with it, so a user fixes a dataset in one pass instead of
one crash per training run. Files are opened with nibabel, the library behind the ``NibabelReader``
that the loaders document (see :mod:`transrisk_components.data.iseg`), so shapes and affines are
compared exactly as the training pipeline will see them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from transrisk_components.data.labels import format_values, spatial_shape, unexpected_values
from transrisk_components.data.registry import DatasetSpec, get_dataset

__all__ = ["check_cases"]

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


def _check_case(case: Mapping, spec: DatasetSpec, voxels: bool) -> list[str]:
    """Every problem found in one case, as human-readable strings (empty when the case is fine)."""
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
    if not voxels:
        return problems

    for p in images:
        data = _read_voxels(p, loaded[p], problems)
        if data is None:
            continue
        if np.issubdtype(data.dtype, np.floating):
            n_bad = int(data.size - np.count_nonzero(np.isfinite(data)))
            if n_bad:
                problems.append(f"image {p} has {n_bad} NaN/Inf voxels")
        if not np.any(data):
            problems.append(f"image {p} is all zero")
    labels = None if label is None else _read_voxels(label, loaded[label], problems)
    if labels is not None:
        bad = unexpected_values(labels, spec.label_values)
        if bad.size:
            keys = [(spec.name, int(v)) for v in bad if float(v).is_integer()]
            hints = [_LABEL_HINTS[key] for key in keys if key in _LABEL_HINTS]
            hint = f" ({'; '.join(hints)})" if hints else ""
            problems.append(
                f"label {label} has values {format_values(bad)} outside {list(spec.label_values)}{hint}"
            )
    return problems


def check_cases(datalist: Sequence[Mapping], dataset: DatasetSpec | str, voxels: bool = True) -> None:
    """Validate every case of a datalist before any training starts.

    Checks per case: every image and label file exists (for Analyze ``.hdr`` also its ``.img``) and is
    readable; all modalities and the label share one spatial shape (trailing singleton dimensions
    ignored) and one affine (within :data:`AFFINE_ATOL`); and, when ``voxels`` is true, no image holds
    NaN/Inf voxels or is entirely zero, and the label holds only the dataset's raw label values.

    Args:
        datalist: cases as returned by a dataset's ``datalist`` function: dicts with ``case_id``,
            ``image`` (list of paths) and ``label`` (path or ``None`` for unlabelled cases).
        dataset: a :class:`~transrisk_components.data.registry.DatasetSpec` or its name (``"fets"``,
            ``"iseg"``); supplies the allowed raw label values.
        voxels: also read voxel data (slower); headers alone when false.

    Raises:
        ValueError: ``datalist`` is empty, or at least one case is bad. One error lists every bad case,
            one line per case, with every problem found.
    """
    spec = _resolve(dataset)
    if len(datalist) == 0:
        raise ValueError(f"empty datalist: no {spec.name} cases to check")
    report = []
    for index, case in enumerate(datalist):
        problems = _check_case(case, spec, voxels)
        if problems:
            report.append(f"  {case.get('case_id', f'case #{index}')}: " + "; ".join(problems))
    if report:
        raise ValueError(
            f"{len(report)} of {len(datalist)} {spec.name} cases failed input checks:\n" + "\n".join(report)
        )
