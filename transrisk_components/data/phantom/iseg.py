"""iSeg-2019 look-alike: 6-month infant brains as true Analyze 7.5 pairs, in the native iSeg layout.

Each subject is the MNI152 brain scaled to infant size (0.82 linear) and randomly deformed. Contrast
follows the isointense phase around 6 months: grey and white matter nearly equal on T1, more
separable on T2 (where unmyelinated white matter is still brighter than grey matter); CSF dark on T1,
bright on T2. Images are written with nibabel's ``AnalyzeImage`` (real ``.hdr``/``.img``, not NIfTI
pairs) with a trailing singleton 4th dimension, as the real headers have. Output::

    <out_dir>/iSeg-2019-Training/
        subject-1-T1.hdr/.img, subject-1-T2.hdr/.img, subject-1-label.hdr/.img   (labels 0/10/150/250)
        ...                      (subjects 1-10 labelled as in the real training set; further
                                  subjects unlabelled, like the validation set, unless ``labelled`` says)

Analyze stores voxel sizes but no orientation: nibabel reads every file back with the same LAS affine
centred on the volume, which is the grid the anatomy is sampled on.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np

from transrisk_components.data.iseg import ISEG_MODALITIES
from transrisk_components.data.phantom.anatomy import Grid, choose_grid, rician_noise, sample_tissues, smooth_field
from transrisk_components.data.phantom.io import atomic_dataset_dir

__all__ = ["ISEG_ROOT_NAME", "make_iseg_phantom"]

ISEG_ROOT_NAME = "iSeg-2019-Training"
_FULL_SHAPE = (144, 192, 256)
_FOV_MM = 160.0
_FLIPS = (-1, 1, 1)  # nibabel's convention for orientation-less Analyze files (LAS)
_INFANT_SCALE = 0.82
_TISSUE_VALUES = np.array([0, 10, 150, 250], dtype=np.uint8)  # background, CSF, GM, WM

#: Relative intensity of CSF, GM, WM per modality (isointense phase).
_CONTRAST: dict[str, tuple[float, float, float]] = {"T1": (0.30, 0.65, 0.66), "T2": (1.50, 0.70, 1.05)}
_SCALE = {"T1": 600.0, "T2": 900.0}
_NOISE = 0.03
_BIAS = 0.15


def _save_analyze(array: np.ndarray, grid: Grid, path: Path) -> None:
    """Write ``[X, Y, Z]`` ``array`` as an Analyze 7.5 pair ``path`` (.hdr) + .img, shape ``[X, Y, Z, 1]``."""
    image = nib.AnalyzeImage(array[..., None], grid.affine)
    image.header.set_zooms((*grid.spacing, 1.0))
    nib.save(image, path)


def make_iseg_phantom(
    out_dir: str | PathLike,
    subjects: int = 10,
    seed: int = 0,
    shape: tuple[int, int, int] | None = None,
    full_size: bool = False,
    labelled: int | None = None,
    overwrite: bool = True,
) -> Path:
    """Write an iSeg-2019 look-alike under ``out_dir`` and return its root for ``iseg2019_datalist``.

    Args:
        out_dir: parent folder; the dataset is ``out_dir/iSeg-2019-Training``.
        subjects: number of subjects, named ``subject-1`` ... ``subject-<subjects>``.
        seed: same seed, same parameters -> byte-identical voxel arrays.
        shape: grid ``(X, Y, Z)``; default ``(64, 64, 64)``. The grid always spans 160 mm, so the
            default spacing is 2.5 mm and ``(32, 32, 32)`` gives 5 mm.
        full_size: write the real size instead, 144x192x256 at 1 mm.
        labelled: how many of the first subjects get a label file; default ``min(subjects, 10)`` as in
            the real training set (the rest are unlabelled like the validation set).
        overwrite: replace an existing phantom there (a folder that is not a phantom is never replaced).

    Raises:
        ValueError: ``subjects`` < 1, ``labelled`` outside ``[0, subjects]``, or a bad ``shape``.
        FileExistsError: see :func:`~transrisk_components.data.phantom.io.atomic_dataset_dir`.
    """
    labelled = min(subjects, 10) if labelled is None else labelled
    if subjects < 1 or not 0 <= labelled <= subjects:
        raise ValueError(f"need subjects >= 1 and 0 <= labelled <= subjects, got {subjects=}, {labelled=}")
    grid = choose_grid(shape, full_size, _FULL_SHAPE, _FOV_MM, _FLIPS)
    params = {"dataset": "iseg", "subjects": subjects, "seed": seed, "shape": grid.shape,
              "spacing": grid.spacing, "labelled": labelled}
    root = Path(out_dir).expanduser().resolve() / ISEG_ROOT_NAME
    with atomic_dataset_dir(root, params, overwrite) as tmp:
        for index in range(subjects):
            rng = np.random.default_rng([seed, 2, index])
            tissues = sample_tissues(grid, rng, scale=_INFANT_SCALE)
            stem = tmp / f"subject-{index + 1}"
            for modality in ISEG_MODALITIES:
                csf, gm, wm = _CONTRAST[modality]
                signal = (tissues.csf * csf + tissues.gm * gm + tissues.wm * wm) * np.exp(
                    smooth_field(rng, grid.shape, _BIAS)
                )
                image = rician_noise(rng, signal, _NOISE) * _SCALE[modality]
                image[~tissues.mask] = 0
                _save_analyze(np.rint(image).astype(np.int16), grid, Path(f"{stem}-{modality}.hdr"))
            if index < labelled:
                _save_analyze(_TISSUE_VALUES[tissues.hard_labels()], grid, Path(f"{stem}-label.hdr"))
    return root
