"""Look-alike data in the challenges' native layouts, so the real loading code is what gets tested.

:func:`make_phantom` is the single entry point (also behind ``scripts/make_phantom.py``); the work is
split by job:

- :mod:`~transrisk_components.data.phantom_anatomy` -- MNI152-based subject anatomy, grids, scanner effects.
- :mod:`~transrisk_components.data.phantom_fets` -- FeTS2021 look-alike (tumours, institutions, NIfTI).
- :mod:`~transrisk_components.data.phantom_iseg` -- iSeg-2019 look-alike (infant contrast, Analyze 7.5).
- :mod:`~transrisk_components.data.phantom_io` -- atomic writes.
- :mod:`~transrisk_components.data.phantom_preview` -- PNG contact sheet.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

from transrisk_components.data.phantom_fets import make_fets_phantom
from transrisk_components.data.phantom_iseg import make_iseg_phantom
from transrisk_components.data.phantom_preview import write_preview
from transrisk_components.data.registry import get_dataset

__all__ = ["make_fets_phantom", "make_iseg_phantom", "make_phantom", "preview_path", "write_preview"]


def make_phantom(
    dataset: str,
    out_dir: str | PathLike,
    subjects: int | None = None,
    seed: int = 0,
    preview: bool = False,
    **options,
) -> Path:
    """Generate a phantom of ``dataset`` under ``out_dir`` and return the root its datalist accepts.

    Args:
        dataset: ``"fets"`` or ``"iseg"``.
        out_dir: parent folder of the dataset root.
        subjects: number of subjects; default the dataset's ``default_phantom_subjects``.
        seed: random seed (same seed and options -> byte-identical voxels).
        preview: also write ``out_dir/<dataset>_phantom_preview.png`` (see
            :func:`~transrisk_components.data.phantom_preview.write_preview`).
        options: passed on to the dataset's generator: ``shape``, ``full_size``, ``overwrite``, and
            ``institutions`` (FeTS) or ``labelled`` (iSeg).
    """
    spec = get_dataset(dataset)
    count = spec.default_phantom_subjects if subjects is None else int(subjects)
    root = spec.make_phantom(out_dir, count, seed, **options)
    if preview:
        write_preview(root, dataset, preview_path(out_dir, dataset))
    return root


def preview_path(out_dir: str | PathLike, dataset: str) -> Path:
    """Where :func:`make_phantom` writes the contact sheet: ``out_dir/<dataset>_phantom_preview.png``."""
    return Path(out_dir).expanduser().resolve() / f"{dataset}_phantom_preview.png"
