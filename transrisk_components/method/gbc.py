"""Gaussian Bhattacharyya coefficient (GBC), a feature-based transferability score (Pandy et al., "Transferability
estimation using Bhattacharyya class separability", CVPR 2022).

A source network's penultimate features of the target voxels are modelled, per target class, by a Gaussian with a
diagonal covariance; classes whose Gaussians overlap are hard to separate after fine-tuning. The score is
``GBC = - sum_{i != j} BC(i, j)`` over ordered pairs of the present target classes, with the Bhattacharyya
coefficient ``BC = exp(-D_B)`` and

    D_B(i, j) = 1/8 (mu_i - mu_j)^T S^-1 (mu_i - mu_j) + 1/2 ln(det S / sqrt(det S_i det S_j)),  S = (S_i + S_j) / 2.

It lies in ``[-K (K - 1), 0]`` for ``K`` present classes; higher (closer to 0) is better. Torch only.
"""

from __future__ import annotations

import torch

__all__ = ["gaussian_bhattacharyya", "gbc_score"]

#: Added to every per-class feature variance, so a constant feature does not divide by zero.
VARIANCE_FLOOR = 1e-6


def gaussian_bhattacharyya(
    mean_a: torch.Tensor, var_a: torch.Tensor, mean_b: torch.Tensor, var_b: torch.Tensor
) -> torch.Tensor:
    """Bhattacharyya coefficient ``exp(-D_B)`` in ``(0, 1]`` of two diagonal Gaussians.

    Args:
        mean_a, mean_b: means ``[D]``.
        var_a, var_b: diagonal variances ``[D]``, positive.

    Returns:
        A 0-d float64 tensor; 1 for identical Gaussians.
    """
    mean_a, var_a, mean_b, var_b = (t.double() for t in (mean_a, var_a, mean_b, var_b))
    var = (var_a + var_b) / 2
    mahalanobis = ((mean_a - mean_b) ** 2 / var).sum() / 8
    log_det = (torch.log(var) - (torch.log(var_a) + torch.log(var_b)) / 2).sum() / 2
    return torch.exp(-(mahalanobis + log_det))


def gbc_score(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """GBC of target classes in a feature space: ``- sum`` of the Bhattacharyya coefficients over ordered pairs of
    the classes present in ``labels`` (each with at least 2 samples).

    Args:
        features: ``[N, D]`` float, one row per sampled voxel.
        labels: ``[N]`` integer target class indices in ``[0, num_classes)``.
        num_classes: ``Ct``.

    Returns:
        The score in ``[-K (K - 1), 0]`` (``K``: present classes); ``nan`` when fewer than 2 classes are present.

    Raises:
        ValueError: ``features`` and ``labels`` disagree in length, or ``features`` is not 2-D.
    """
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"gbc_score wants features [N, D] and labels [N], got {tuple(features.shape)} and "
                         f"{tuple(labels.shape)}")
    features = features.double()
    gaussians = []
    for c in range(num_classes):
        members = features[labels == c]
        if members.shape[0] >= 2:
            gaussians.append((members.mean(0), members.var(0, unbiased=True) + VARIANCE_FLOOR))
    if len(gaussians) < 2:
        return float("nan")
    total = 0.0
    for i, (mean_i, var_i) in enumerate(gaussians):
        for j, (mean_j, var_j) in enumerate(gaussians):
            if i != j:
                total += float(gaussian_bhattacharyya(mean_i, var_i, mean_j, var_j))
    return -total
