"""Subject anatomy and scanner effects for the look-alike phantoms.

Anatomy comes from the MNI152 template's brain mask and grey / white-matter probability maps that
nilearn ships inside its package (2 mm, no download); CSF is the brain mask minus GM minus WM. Each
subject samples them through a random affine (rotation, anisotropic scale, shift) plus a random smooth
displacement field, onto the phantom's voxel grid. Scanner effects: smooth multiplicative bias field,
Gaussian blur, Rician noise. Everything takes a ``numpy.random.Generator`` so one seed gives
byte-identical volumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

__all__ = ["Grid", "Tissues", "choose_grid", "make_grid", "rician_noise", "sample_tissues", "smooth_field"]


@dataclass(frozen=True)
class Grid:
    """A phantom voxel grid.

    Attributes:
        shape: ``(X, Y, Z)`` voxels.
        spacing: ``(sx, sy, sz)`` mm.
        affine: ``[4, 4]`` voxel -> world (mm, RAS); grid centre at the world origin.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray


@dataclass(frozen=True)
class Tissues:
    """Tissue probabilities of one subject on its grid, each ``[X, Y, Z]`` float32 in [0, 1].

    ``csf + gm + wm == brain`` voxel-wise; ``mask`` is the skull-stripping mask (``brain > 0.5``).
    """

    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return self.brain > 0.5

    def hard_labels(self) -> np.ndarray:
        """``[X, Y, Z]`` uint8: 0 outside the mask, else 1 CSF / 2 GM / 3 WM by largest probability."""
        hard = np.argmax(np.stack([self.csf, self.gm, self.wm]), axis=0).astype(np.uint8) + 1
        hard[~self.mask] = 0
        return hard


def make_grid(shape: tuple[int, int, int], spacing: tuple[float, float, float], flips: tuple[int, int, int]) -> Grid:
    """Grid of ``shape`` voxels at ``spacing`` mm, axis directions ``flips`` (e.g. ``(-1, -1, 1)`` for
    LPS-stored data like BraTS / FeTS), centred on the world origin."""
    direction = np.diag(np.asarray(flips, float) * np.asarray(spacing, float))
    affine = np.eye(4)
    affine[:3, :3] = direction
    affine[:3, 3] = -direction @ ((np.asarray(shape) - 1) / 2.0)
    return Grid(tuple(int(s) for s in shape), tuple(float(s) for s in spacing), affine)


@lru_cache(maxsize=1)
def _mni() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNI152 (2 mm) ``(tissues [3, 99, 117, 95] as csf, gm, wm; brain mask; affine [4, 4]; brain centre mm)``."""
    from nilearn import datasets  # heavy import, only needed when a phantom is generated

    def load(fn):
        return np.asarray(fn(resolution=2).dataobj, dtype=np.float32)

    gm = np.clip(load(datasets.load_mni152_gm_template), 0, 1)
    wm = np.clip(load(datasets.load_mni152_wm_template), 0, 1)
    mask_img = datasets.load_mni152_brain_mask(resolution=2)
    brain = (np.asarray(mask_img.dataobj) > 0).astype(np.float32)
    total = gm + wm
    over = total > 1
    gm[over] /= total[over]
    wm[over] /= total[over]
    gm *= brain
    wm *= brain
    csf = np.clip(brain - gm - wm, 0, 1)
    inside = np.argwhere(brain > 0)
    centre_vox = (inside.min(0) + inside.max(0)) / 2.0
    centre_mm = mask_img.affine[:3, :3] @ centre_vox + mask_img.affine[:3, 3]
    return np.stack([csf, gm, wm]), brain, mask_img.affine, centre_mm


@lru_cache(maxsize=32)
def _upsampling_matrix(coarse: int, n: int) -> np.ndarray:
    """``[n, coarse]`` float32 matrix doing 1-D cubic-spline upsampling of ``coarse`` knots to ``n`` samples."""
    eye = np.eye(coarse)
    columns = [ndimage.zoom(eye[a], n / coarse, order=3, mode="nearest", grid_mode=True) for a in range(coarse)]
    return np.stack(columns, axis=1).astype(np.float32)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], sd: float, coarse: int = 4) -> np.ndarray:
    """Smooth random field ``[X, Y, Z]`` float32: ``coarse^3`` normal(0, ``sd``) knots, cubic-upsampled.

    Spline upsampling is separable, so it is done one axis at a time with small matrices (as fast
    as a few array products, and without BLAS, whose summation order could vary between machines).
    """
    field = rng.normal(0.0, sd, size=(coarse,) * 3).astype(np.float32)
    bx, by, bz = (_upsampling_matrix(coarse, n) for n in shape)
    field = (bx[:, :, None, None] * field[None]).sum(axis=1)  # [X, c, c]
    field = (by[None, :, :, None] * field[:, None]).sum(axis=2)  # [X, Y, c]
    return (field[:, :, None, :] * bz[None, None]).sum(axis=3)  # [X, Y, Z]


def _random_linear(rng: np.random.Generator, scale: float) -> np.ndarray:
    """``[3, 3]`` world -> template map: small rotation (±6°), anisotropic scale (±6 %), over ``scale``."""
    angles = np.deg2rad(rng.uniform(-6, 6, size=3))
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rotation = rotation @ r
    stretch = np.diag(rng.uniform(0.94, 1.06, size=3))
    return rotation @ stretch / scale


def sample_tissues(grid: Grid, rng: np.random.Generator, scale: float = 1.0, deform_mm: float = 3.0) -> Tissues:
    """Deform the MNI152 tissue maps into one random subject on ``grid``.

    Args:
        grid: target grid.
        rng: random generator (the only source of randomness).
        scale: linear head size relative to the adult template (e.g. 0.82 for a 6-month infant).
        deform_mm: standard deviation of the smooth displacement knots, mm.

    Returns:
        :class:`Tissues` with ``[X, Y, Z]`` float32 maps.
    """
    tissues, brain, mni_affine, mni_centre = _mni()
    mni_inverse = np.linalg.inv(mni_affine)
    linear = _random_linear(rng, scale)
    shift = rng.uniform(-3, 3, size=3)
    # grid voxel -> template voxel: inv(mni) @ (linear @ (grid affine @ ijk) + centre + shift)
    to_mni = mni_inverse[:3, :3] @ linear @ grid.affine[:3, :3]
    offset = mni_inverse[:3, :3] @ (linear @ grid.affine[:3, 3] + mni_centre + shift) + mni_inverse[:3, 3]
    displacement = [smooth_field(rng, grid.shape, deform_mm, coarse=5) for _ in range(3)]
    ijk = np.ogrid[tuple(slice(0, n) for n in grid.shape)]
    coords = np.empty((3, *grid.shape), dtype=np.float32)
    for c in range(3):
        coords[c] = offset[c] + sum(to_mni[c, a] * ijk[a].astype(np.float32) for a in range(3))
        coords[c] += sum(mni_inverse[c, a] * displacement[a] for a in range(3))
    csf, gm, wm = (ndimage.map_coordinates(t, coords, order=1, mode="constant", cval=0.0) for t in tissues)
    brain_p = ndimage.map_coordinates(brain, coords, order=1, mode="constant", cval=0.0)
    total = np.maximum(csf + gm + wm, 1e-6)
    return Tissues(*(np.clip(t * brain_p / total, 0, 1).astype(np.float32) for t in (csf, gm, wm)), brain_p)


def rician_noise(rng: np.random.Generator, signal: np.ndarray, sd: float) -> np.ndarray:
    """Magnitude of ``signal`` plus complex Gaussian noise of standard deviation ``sd`` (same shape)."""
    real = signal + rng.normal(0.0, sd, size=signal.shape).astype(np.float32)
    imag = rng.normal(0.0, sd, size=signal.shape).astype(np.float32)
    return np.sqrt(real * real + imag * imag)


def choose_grid(
    shape: tuple[int, int, int] | None,
    full_size: bool,
    full_shape: tuple[int, int, int],
    fov_mm: float,
    flips: tuple[int, int, int],
    default_shape: tuple[int, int, int] = (64, 64, 64),
) -> Grid:
    """The phantom grid: ``full_shape`` at 1 mm if ``full_size``, else ``shape`` (default
    ``default_shape``) with the spacing that spans a ``fov_mm`` field of view along every axis.

    Raises:
        ValueError: both ``shape`` and ``full_size`` given, or ``shape`` is not three positive ints.
    """
    if full_size:
        if shape is not None:
            raise ValueError("give either shape or full_size, not both")
        return make_grid(full_shape, (1.0, 1.0, 1.0), flips)
    shape = default_shape if shape is None else tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"phantom shape must be three sizes of at least 8 voxels, got {shape}")
    return make_grid(shape, tuple(fov_mm / s for s in shape), flips)
