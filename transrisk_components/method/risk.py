"""Transferability -> transfer risk map -> per-voxel loss weights.

The paper defines risk only as "low transferability means high risk". transrisk makes each step an option:

Risk normalisation (:func:`transfer_risk`), all non-increasing in ``T`` and in ``[0, 1]``:

- ``"complement"`` (default): ``risk = 1 - T``. Absolute: a voxel's risk does not depend on the rest of its
  image, so maps of different cases are comparable and the saved map reads as "probability the source's
  empirical predictor gets this voxel wrong".
- ``"minmax"``: ``risk = (T_max - T) / (T_max - T_min)`` per image (0 for a constant image). Relative: stretches
  each image's risk to the full range, useful when all transferabilities are high.
- ``"neglog_minmax"``: ``-log T`` min-max normalised per image,
  ``risk = (log T_max - log T) / (log T_max - log T_min)`` (0 for a constant image), with ``T`` floored at
  ``1e-6`` first so that one voxel the source gets hopelessly wrong cannot squash every other voxel to 0. Relative
  like ``"minmax"``, but on the log scale of LEEP: it spreads the high-transferability voxels (``T`` near 1) that
  ``"minmax"`` crowds near 0 (a choice seen in a public re-implementation of the paper).

Weighting schemes (:func:`risk_to_weights`), all non-decreasing in risk for ``strength >= 0``:

- ``"linear"`` (these functions' default; the bundles' default at strength 8, the variant study's choice on
  validation cases, see the README): ``w = 1 + strength * risk`` -- weights in ``[1, 1 + strength]``;
- ``"exponential"``: ``w = exp(strength * risk)`` -- weights in ``[1, e^strength]``, sharper emphasis;
- ``"power10"``: ``w = 10^(strength * risk)`` -- weights in ``[1, 10^strength]`` (range 1-10 at strength 1, the
  choice seen in a public re-implementation, paired with ``"neglog_minmax"``);
- ``"inverse"``: ``w = (1 - risk)^(-strength)`` with ``1 - risk`` floored at ``0.01`` (weights in
  ``[1, 100^strength]``). With ``"complement"`` risk this is ``T^(-strength)``; on the location-wise map, whose
  transferability is ``exp(LEEP_location)`` (see :class:`~transrisk_components.method.transferability.
  LocationLEEPStatistics`), ``"complement"`` + ``"inverse"`` at strength 1 is the weight ``exp(-LEEP_location)`` of
  the authors' pixel-wise transferability (exact for ``LEEP_location >= log 0.01``, i.e. ``T >= 0.01``);
- ``"uniform"``: ``w = 1`` everywhere (ablation: the map is ignored).
"""

from __future__ import annotations

import math

import torch

__all__ = ["RISK_NORMALIZATIONS", "WEIGHT_SCHEMES", "transfer_risk", "risk_to_weights"]

RISK_NORMALIZATIONS = ("complement", "minmax", "neglog_minmax")
WEIGHT_SCHEMES = ("linear", "exponential", "power10", "inverse", "uniform")

#: Floor of ``T`` before its logarithm in ``"neglog_minmax"``.
NEGLOG_FLOOR = 1e-6
#: Floor of ``1 - risk`` in the ``"inverse"`` scheme (caps its weights at ``100^strength``).
INVERSE_FLOOR = 1e-2


def _check_map(name: str, values: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``values`` is a finite ``[B, 1, *spatial]`` map in ``[0, 1]``."""
    if values.ndim < 3 or values.shape[1] != 1:
        raise ValueError(f"{name} must be [B, 1, *spatial], got shape {tuple(values.shape)}.")
    if not torch.isfinite(values).all():
        raise ValueError(f"{name} contains NaN or Inf values.")
    if values.numel() and (values.min() < 0 or values.max() > 1):
        raise ValueError(
            f"{name} must lie in [0, 1], got range [{values.min().item():.4g}, {values.max().item():.4g}]."
        )


def _per_image_minmax(values: torch.Tensor) -> torch.Tensor:
    """``(v - v_min) / (v_max - v_min)`` per image of ``values [B, 1, *spatial]``; 0 for a constant image."""
    flat = values.flatten(1)
    v_min = flat.min(dim=1).values.view(-1, *([1] * (values.ndim - 1)))
    v_max = flat.max(dim=1).values.view(-1, *([1] * (values.ndim - 1)))
    span = v_max - v_min
    return torch.where(span > 0, (values - v_min) / span.clamp_min(1e-12), 0.0)


def transfer_risk(transferability: torch.Tensor, normalization: str = "complement") -> torch.Tensor:
    """Transfer risk map from a pixel transferability map.

    Args:
        transferability: ``[B, 1, *spatial]`` values of ``T`` in ``[0, 1]``.
        normalization: ``"complement"``, ``"minmax"`` or ``"neglog_minmax"`` (see the module docstring).

    Returns:
        ``[B, 1, *spatial]`` risk in ``[0, 1]``, non-increasing in ``T`` within each image.
    """
    _check_map("transferability", transferability)
    if normalization == "complement":
        return 1.0 - transferability
    if normalization == "minmax":
        return _per_image_minmax(-transferability)
    if normalization == "neglog_minmax":
        return _per_image_minmax(-transferability.clamp_min(NEGLOG_FLOOR).log())
    raise ValueError(f"unknown risk normalization {normalization!r}; choose one of {RISK_NORMALIZATIONS}.")


def risk_to_weights(risk: torch.Tensor, scheme: str = "linear", strength: float = 1.0) -> torch.Tensor:
    """Per-voxel loss weights from a risk map.

    The map is not range-checked here (this runs every training step); :func:`transfer_risk` checks its input
    when the map is made.

    Args:
        risk: ``[B, 1, *spatial]`` risk in ``[0, 1]``.
        scheme: ``"linear"``, ``"exponential"``, ``"power10"``, ``"inverse"`` or ``"uniform"`` (see the module
            docstring).
        strength: ``s >= 0``; 0 gives uniform weights for every scheme.

    Returns:
        ``[B, 1, *spatial]`` weights ``>= 1``, non-decreasing in risk.
    """
    if strength < 0:
        raise ValueError(f"strength must be >= 0 so that higher risk never lowers a weight, got {strength}.")
    if scheme not in WEIGHT_SCHEMES:
        raise ValueError(f"unknown weighting scheme {scheme!r}; choose one of {WEIGHT_SCHEMES}.")
    if scheme == "uniform":
        return torch.ones_like(risk)
    if scheme == "linear":
        return (strength * risk).add_(1.0)
    if scheme == "exponential":
        return (strength * risk).exp_()
    if scheme == "power10":
        return (strength * math.log(10.0) * risk).exp_()
    return (1.0 - risk).clamp_(min=INVERSE_FLOOR).pow_(-strength)
