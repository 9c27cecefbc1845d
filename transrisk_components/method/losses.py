"""The risk-weighted, foreground-normalised segmentation loss used for fine-tuning."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks import one_hot
from torch import nn

from transrisk_components.method.risk import WEIGHT_SCHEMES, risk_to_weights

__all__ = ["RiskWeightedLoss"]

NORMALIZATIONS = ("foreground", "voxels")
DICE_MODES = ("unweighted", "weighted")


class RiskWeightedLoss(nn.Module):
    """Cross-entropy weighted per voxel by the transfer risk map, plus a soft Dice term.

    For image ``b`` with voxel weights ``w = risk_to_weights(risk)``::

        CE_b   = sum_v w_v * CE(logits_v, y_v) / N_b
        Dice_b = mean_c [1 - (2 sum_v u_v p_vc g_vc + eps_nr) / (sum_v u_v (p_vc + g_vc) + eps_dr)]
        loss   = mean_b (lambda_ce * CE_b + lambda_dice * Dice_b)

    where ``N_b`` is the image's foreground voxel count (``labels > 0``, at least 1) for
    ``normalization="foreground"`` or its voxel count for ``"voxels"``, and ``u = w`` for ``dice="weighted"``,
    ``u = 1`` for ``dice="unweighted"``. With ``scheme="uniform"``, ``normalization="voxels"`` and
    ``dice="unweighted"`` this equals MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True)`` on equal-size
    images.

    Foreground normalisation keeps the cross-entropy of a small tumour from being diluted by the background
    of a large volume (the paper's remedy against class imbalance); it makes the CE term larger than the
    voxel-mean CE by the ratio of image size to foreground size.

    Args:
        scheme: weighting scheme, one of ``"linear"``, ``"exponential"``, ``"uniform"``
            (see :mod:`transrisk_components.method.risk`).
        strength: weighting strength ``s >= 0``.
        normalization: ``"foreground"`` (default) or ``"voxels"``.
        dice: ``"unweighted"`` (default) or ``"weighted"`` soft Dice.
        include_background: whether the Dice term includes channel 0.
        lambda_ce: weight of the cross-entropy term, ``>= 0``.
        lambda_dice: weight of the Dice term, ``>= 0``.
        smooth_nr: Dice numerator smoothing.
        smooth_dr: Dice denominator smoothing.
    """

    def __init__(
        self,
        scheme: str = "linear",
        strength: float = 1.0,
        normalization: str = "foreground",
        dice: str = "unweighted",
        include_background: bool = True,
        lambda_ce: float = 1.0,
        lambda_dice: float = 1.0,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
    ) -> None:
        super().__init__()
        if scheme not in WEIGHT_SCHEMES:
            raise ValueError(f"unknown weighting scheme {scheme!r}; choose one of {WEIGHT_SCHEMES}.")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {normalization!r}; choose one of {NORMALIZATIONS}.")
        if dice not in DICE_MODES:
            raise ValueError(f"unknown dice mode {dice!r}; choose one of {DICE_MODES}.")
        if strength < 0 or lambda_ce < 0 or lambda_dice < 0:
            raise ValueError(
                f"strength, lambda_ce and lambda_dice must be >= 0, got {strength}, {lambda_ce}, {lambda_dice}."
            )
        self.scheme = scheme
        self.strength = float(strength)
        self.normalization = normalization
        self.dice = dice
        self.include_background = include_background
        self.lambda_ce = float(lambda_ce)
        self.lambda_dice = float(lambda_dice)
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor, risk: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            logits: ``[B, C, *spatial]`` network outputs before softmax.
            labels: ``[B, 1, *spatial]`` class indices in ``[0, C)`` (any numeric dtype).
            risk: ``[B, 1, *spatial]`` transfer risk in ``[0, 1]``; ``None`` means uniform weights.

        Returns:
            A scalar tensor.
        """
        expected = (logits.shape[0], 1, *logits.shape[2:])
        if tuple(labels.shape) != expected:
            raise ValueError(f"labels must have shape {expected} for logits {tuple(logits.shape)}, got {tuple(labels.shape)}.")
        if risk is not None and tuple(risk.shape) != expected:
            raise ValueError(f"risk must have shape {expected} for logits {tuple(logits.shape)}, got {tuple(risk.shape)}.")
        weights = None
        if risk is not None and self.scheme != "uniform":
            weights = risk_to_weights(risk.to(logits.dtype), self.scheme, self.strength)
        labels = labels.long()
        loss = self.lambda_ce * self._weighted_ce(logits, labels, weights)
        if self.lambda_dice > 0:
            dice_weights = weights if self.dice == "weighted" else None
            loss = loss + self.lambda_dice * self._soft_dice(logits, labels, dice_weights)
        return loss

    def _weighted_ce(self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """Batch mean of per-image weighted CE sums over ``N_b``; ``weights`` None means all ones."""
        voxel_ce = F.cross_entropy(logits, labels[:, 0], reduction="none")  # [B, *spatial]
        if weights is not None:
            voxel_ce = weights[:, 0] * voxel_ce
        per_image = voxel_ce.flatten(1).sum(dim=1)  # [B]
        if self.normalization == "foreground":
            normaliser = (labels > 0).flatten(1).sum(dim=1).clamp_min(1)
        else:
            normaliser = torch.full_like(per_image, labels[0].numel())
        return (per_image / normaliser.to(per_image.dtype)).mean()

    def _soft_dice(self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """Mean over images and classes of the voxel-weighted soft Dice loss; ``weights`` None means all ones."""
        probs = torch.softmax(logits, dim=1)  # [B, C, *spatial]
        target = one_hot(labels, num_classes=logits.shape[1], dtype=probs.dtype)  # [B, C, *spatial]
        if not self.include_background:
            probs, target = probs[:, 1:], target[:, 1:]
        reduce_dims = tuple(range(2, logits.ndim))
        if weights is None:  # separate sums: no [B, C, *spatial] temporary for probs + target
            intersection = (probs * target).sum(dim=reduce_dims)  # [B, C']
            denominator = probs.sum(dim=reduce_dims) + target.sum(dim=reduce_dims)  # [B, C']
        else:
            weighted_target = weights * target
            intersection = (probs * weighted_target).sum(dim=reduce_dims)
            denominator = (weights * probs).sum(dim=reduce_dims) + weighted_target.sum(dim=reduce_dims)
        dice = (2.0 * intersection + self.smooth_nr) / (denominator + self.smooth_dr)
        return (1.0 - dice).mean()
