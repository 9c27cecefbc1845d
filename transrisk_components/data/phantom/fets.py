"""FeTS2021 look-alike: glioma subjects from several "institutions", in the native FeTS layout.

Each subject is a deformed MNI152 brain with one tumour: a necrotic core (label 1) inside an enhancing
rim (4) inside edema (2), with irregular smooth boundaries. Tissues and tumour parts have their own
relative intensity per modality (enhancing rim bright on T1ce only, edema bright on FLAIR / T2 and
weak on T1, CSF dark on T1 / FLAIR and bright on T2). Each institution is a scanner with its own
intensity scale, contrast (gamma per modality), noise, bias-field strength and blur, so models can be
trained on one site and transferred to another. Output::

    <out_dir>/MICCAI_FeTS2021_TrainingData/
        FeTS21_Training_001/FeTS21_Training_001_{t1,t1ce,t2,flair,seg}.nii.gz   (int16 / uint8 seg)
        ...                                     (ids with gaps, as in the real data)
        partitioning_1.csv                      (one partition per institution)
        partitioning_2.csv                      (each institution split in two)
        README.txt
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from transrisk_components.data.fets import FETS_MODALITIES
from transrisk_components.data.phantom.anatomy import (
    Grid,
    Tissues,
    choose_grid,
    rician_noise,
    sample_tissues,
    smooth_field,
)
from transrisk_components.data.phantom.io import atomic_dataset_dir

__all__ = ["FETS_ROOT_NAME", "Scanner", "make_fets_phantom"]

FETS_ROOT_NAME = "MICCAI_FeTS2021_TrainingData"
_FULL_SHAPE = (240, 240, 155)
_FOV_MM = 192.0
_FLIPS = (-1, -1, 1)  # BraTS / FeTS NIfTI files store LPS-ordered voxels

#: Relative intensity (WM on T1 = 1) of each compartment per modality:
#: CSF, GM, WM, necrotic core (1), edema (2), enhancing rim (4).
_CONTRAST: dict[str, tuple[float, ...]] = {
    "t1": (0.25, 0.62, 1.00, 0.30, 0.55, 0.60),
    "t1ce": (0.30, 0.65, 0.95, 0.28, 0.55, 1.65),
    "t2": (1.40, 0.70, 0.45, 1.25, 1.10, 0.85),
    "flair": (0.18, 0.78, 0.60, 0.45, 1.45, 0.95),
}
_TUMOUR_COLUMN = {1: 3, 2: 4, 4: 5}


@dataclass(frozen=True)
class Scanner:
    """Acquisition characteristics of one institution.

    Attributes:
        scale: stored intensity of relative intensity 1 (WM on T1).
        gamma: contrast exponent per modality (``t1, t1ce, t2, flair`` order).
        noise: Rician noise standard deviation, relative to WM on T1.
        bias: standard deviation of the log bias field.
        blur: Gaussian blur sigma, voxels.
    """

    scale: float
    gamma: tuple[float, ...]
    noise: float
    bias: float
    blur: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Scanner:
        return cls(
            scale=float(800.0 * np.exp(rng.normal(0.0, 0.6))),
            gamma=tuple(float(g) for g in rng.uniform(0.7, 1.4, size=len(FETS_MODALITIES))),
            noise=float(rng.uniform(0.015, 0.07)),
            bias=float(rng.uniform(0.05, 0.35)),
            blur=float(rng.uniform(0.0, 1.0)),
        )


def _tumour(grid: Grid, tissues: Tissues, rng: np.random.Generator) -> np.ndarray:
    """``[X, Y, Z]`` uint8 labels 0/1/2/4: core inside rim inside edema, centred in white matter."""
    candidates = np.flatnonzero(tissues.wm > 0.5)
    if candidates.size == 0:
        candidates = np.flatnonzero(tissues.mask)
    centre = np.array(np.unravel_index(candidates[rng.integers(candidates.size)], grid.shape), float)
    step = max(grid.spacing)
    rim = rng.uniform(18.0, 30.0)  # large gliomas, so that ET and TC are learnable at 3 mm in a few epochs
    core = max(0.5 * rim, step)
    rim = max(rim, core + 2 * step)
    edema = max(rng.uniform(1.3, 1.6) * rim, rim + 1.5 * step)
    axes = rng.uniform(0.8, 1.2, size=3)
    ijk = np.ogrid[tuple(slice(0, n) for n in grid.shape)]
    dist = np.sqrt(sum(((ijk[a] - centre[a]) * grid.spacing[a] / axes[a]) ** 2 for a in range(3)))
    label = np.zeros(grid.shape, np.uint8)
    for value, radius, wobble, region in (
        (2, edema, 0.25, tissues.mask & (tissues.csf < 0.5)),
        (4, rim, 0.12, tissues.mask),
        (1, core, 0.15, tissues.mask),
    ):
        boundary = dist * (1.0 + smooth_field(rng, grid.shape, wobble, coarse=6))
        label[(boundary < radius) & region] = value
    return label


def _modality(
    tissues: Tissues, label: np.ndarray, modality: str, gamma: float, scanner: Scanner, rng: np.random.Generator
) -> np.ndarray:
    """``[X, Y, Z]`` int16 image of one modality with this scanner's contrast, bias, blur and noise."""
    contrast = _CONTRAST[modality]
    signal = tissues.csf * contrast[0] + tissues.gm * contrast[1] + tissues.wm * contrast[2]
    texture = 1.0 + smooth_field(rng, label.shape, 0.08, coarse=8)
    for value, col in _TUMOUR_COLUMN.items():
        inside = label == value
        signal[inside] = contrast[col] * texture[inside] * tissues.brain[inside]
    signal = np.power(np.clip(signal, 0, None), gamma) * np.exp(smooth_field(rng, label.shape, scanner.bias))
    if scanner.blur > 0:
        signal = ndimage.gaussian_filter(signal, scanner.blur)
    image = rician_noise(rng, signal, scanner.noise) * scanner.scale
    image[~tissues.mask] = 0
    return np.clip(np.rint(image), 0, np.iinfo(np.int16).max).astype(np.int16)


def _save_nifti(array: np.ndarray, grid: Grid, path: Path) -> None:
    image = nib.Nifti1Image(array, grid.affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(grid.affine, code=1)
    image.set_sform(grid.affine, code=1)
    nib.save(image, path)


def _write_partitions(path: Path, rows: list[tuple[str, int]]) -> None:
    """Partitioning CSV in the real format: ``Subject_ID,Partition_ID``, CRLF, ids "01", no final newline."""
    lines = ["Subject_ID,Partition_ID"] + [f"{s},{p:02d}" for s, p in sorted(rows, key=lambda r: (r[1], r[0]))]
    path.write_bytes("\r\n".join(lines).encode("ascii"))


def _split_in_two(assignment: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Finer partitioning: each institution's subjects split into two consecutive partitions."""
    rows, next_id = [], 1
    for institution in sorted({p for _, p in assignment}):
        members = sorted(s for s, p in assignment if p == institution)
        half = (len(members) + 1) // 2
        for group in (members[:half], members[half:]):
            if group:
                rows += [(s, next_id) for s in group]
                next_id += 1
    return rows


def make_fets_phantom(
    out_dir: str | PathLike,
    subjects: int = 24,
    seed: int = 0,
    shape: tuple[int, int, int] | None = None,
    full_size: bool = False,
    institutions: int = 3,
    overwrite: bool = True,
) -> Path:
    """Write a FeTS2021 look-alike under ``out_dir`` and return its root for ``fets2021_datalist``.

    Args:
        out_dir: parent folder; the dataset is ``out_dir/MICCAI_FeTS2021_TrainingData``.
        subjects: number of subjects (ids ``FeTS21_Training_001``... with a gap after every tenth).
        seed: same seed, same parameters -> byte-identical voxel arrays.
        shape: grid ``(X, Y, Z)``; default ``(64, 64, 64)``. The grid always spans 192 mm, so the
            default spacing is 3 mm and ``(32, 32, 32)`` gives 6 mm.
        full_size: write the real size instead, 240x240x155 at 1 mm (about 10 s per subject).
        institutions: number of scanners / partitions; subjects are split into consecutive blocks.
        overwrite: replace an existing phantom there (a folder that is not a phantom is never replaced).

    Returns:
        ``out_dir/MICCAI_FeTS2021_TrainingData`` (holds ``partitioning_1.csv`` and ``partitioning_2.csv``).

    Raises:
        ValueError: fewer subjects than institutions, more than 900 subjects, or a bad ``shape``.
        FileExistsError: see :func:`~transrisk_components.data.phantom.io.atomic_dataset_dir`.
    """
    if not 1 <= institutions <= subjects <= 900:
        raise ValueError(f"need 1 <= institutions ({institutions}) <= subjects ({subjects}) <= 900")
    grid = choose_grid(shape, full_size, _FULL_SHAPE, _FOV_MM, _FLIPS)
    scanners = [Scanner.draw(np.random.default_rng([seed, 1, k])) for k in range(institutions)]
    params = {"dataset": "fets", "subjects": subjects, "seed": seed, "shape": grid.shape,
              "spacing": grid.spacing, "institutions": institutions, "scanners": [asdict(s) for s in scanners]}
    root = Path(out_dir).expanduser().resolve() / FETS_ROOT_NAME
    assignment = []
    with atomic_dataset_dir(root, params, overwrite) as tmp:
        for index in range(subjects):
            case_id = f"FeTS21_Training_{index + 1 + index // 10:03d}"
            institution = index * institutions // subjects
            scanner = scanners[institution]
            rng = np.random.default_rng([seed, 0, index])
            tissues = sample_tissues(grid, rng)
            label = _tumour(grid, tissues, rng)
            folder = tmp / case_id
            folder.mkdir()
            for column, modality in enumerate(FETS_MODALITIES):
                image = _modality(tissues, label, modality, scanner.gamma[column], scanner, rng)
                _save_nifti(image, grid, folder / f"{case_id}_{modality}.nii.gz")
            _save_nifti(label, grid, folder / f"{case_id}_seg.nii.gz")
            assignment.append((case_id, institution + 1))
        _write_partitions(tmp / "partitioning_1.csv", assignment)
        _write_partitions(tmp / "partitioning_2.csv", _split_in_two(assignment))
        (tmp / "README.txt").write_text(
            "Synthetic FeTS2021 look-alike generated by transrisk (not patient data).\n"
            f"{subjects} subjects, {institutions} institutions (partitioning_1.csv), seed {seed}, "
            f"grid {grid.shape} at {tuple(round(s, 3) for s in grid.spacing)} mm.\n"
        )
    return root
