"""Look-alike data in the challenges' native layouts, so the real loading code is what gets tested.

:func:`make_phantom` is the single entry point (also behind ``scripts/make_phantom.py``); the work is
split by job:

- :mod:`~transrisk_components.data.phantom.anatomy` -- MNI152-based subject anatomy, grids, scanner effects.
- :mod:`~transrisk_components.data.phantom.fets` -- FeTS2021 look-alike (tumours, institutions, NIfTI).
- :mod:`~transrisk_components.data.phantom.iseg` -- iSeg-2019 look-alike (infant contrast, Analyze 7.5).
- :mod:`~transrisk_components.data.phantom.io` -- atomic writes.

The PNG contact sheet of a phantom is drawn by :mod:`transrisk_components.reporting.phantom_preview`.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

from transrisk_components.data.phantom.fets import make_fets_phantom
from transrisk_components.data.phantom.iseg import make_iseg_phantom
from transrisk_components.data.registry import get_dataset

__all__ = ["make_fets_phantom", "make_iseg_phantom", "make_phantom"]


def make_phantom(
    dataset: str,
    out_dir: str | PathLike,
    subjects: int | None = None,
    seed: int = 0,
    **options,
) -> Path:
    """Generate a phantom of ``dataset`` under ``out_dir`` and return the root its datalist accepts.

    Args:
        dataset: ``"fets"`` or ``"iseg"``.
        out_dir: parent folder of the dataset root.
        subjects: number of subjects; default the dataset's ``default_phantom_subjects``.
        seed: random seed (same seed and options -> byte-identical voxels).
        options: passed on to the dataset's generator: ``shape``, ``full_size``, ``overwrite``, and
            ``institutions`` (FeTS) or ``labelled`` (iSeg).
    """
    spec = get_dataset(dataset)
    count = spec.default_phantom_subjects if subjects is None else int(subjects)
    return spec.make_phantom(out_dir, count, seed, **options)
