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
CE_VOXELS = ("all", "foreground")


class RiskWeightedLoss(nn.Module):
    """Cross-entropy weighted per voxel by the transfer risk map, plus a soft Dice term.

    For sample ``b`` (a whole image or a patch cut from one) with voxel weights ``w = risk_to_weights(risk)``::

        CE_b   = sum_{v in V_b} w_v * CE(logits_v, y_v) / N_b
        Dice_b = mean_c [1 - (2 sum_v u_v p_vc g_vc + eps_nr) / (sum_v u_v (p_vc + g_vc) + eps_dr)]
        loss   = mean_b (lambda_ce * CE_b + lambda_dice * Dice_b)

    and ``u = w`` for ``dice="weighted"``, ``u = 1`` for ``dice="unweighted"``. ``V_b`` is every voxel of the sample
    (``ce_voxels="all"``) or only its foreground voxels, ``label > 0`` (``ce_voxels="foreground"``: background is
    then learnt from the Dice term alone; with ``normalization="foreground"`` the CE term is the mean CE over the
    case's tumour voxels -- "CE over foreground voxels + Dice", a choice seen in a public re-implementation).
    The normaliser ``N_b``:

    - ``normalization="foreground"`` (the paper's): the foreground voxel count (``label > 0``) of the **whole
      case** the sample was cut from, passed as ``foreground_voxels``. Per case, not per patch: every patch of a
      case shares one normaliser, so the patch sums of a case add up to the paper's whole-volume loss
      ``sum_v w_v CE_v / N_fg`` and a tumour-free patch (half of them under ``RandCropByPosNegLabeld(pos=1,
      neg=1)``) weighs what its voxels' CE says -- not ~10^5 times more, as a per-patch count clamped at 1 made
      it. Per case rather than per batch because a batch of background patches has no foreground to count. A
      case without any foreground (e.g. no enhancing tumour under the ``"ET"`` task) has no such scale: its
      samples fall back to their voxel count (a voxel mean).
    - ``normalization="voxels"``: the sample's voxel count (a voxel mean). With ``scheme="uniform"`` and
      ``dice="unweighted"`` this equals MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True)``.

    Foreground normalisation keeps the cross-entropy of a small tumour from being diluted by the background
    of a large volume (the paper's remedy against class imbalance); it makes the CE term larger than the
    voxel-mean CE by about the ratio of sample size to the case's foreground size.

    Args:
        scheme: weighting scheme, one of :data:`~transrisk_components.method.risk.WEIGHT_SCHEMES`
            (see :mod:`transrisk_components.method.risk`).
        strength: weighting strength ``s >= 0``.
        normalization: ``"foreground"`` (default) or ``"voxels"``.
        dice: ``"unweighted"`` (default) or ``"weighted"`` soft Dice.
        ce_voxels: ``"all"`` (default) or ``"foreground"``: the voxels the cross-entropy sums over.
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
        ce_voxels: str = "all",
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
        if ce_voxels not in CE_VOXELS:
            raise ValueError(f"unknown ce_voxels {ce_voxels!r}; choose one of {CE_VOXELS}.")
        if strength < 0 or lambda_ce < 0 or lambda_dice < 0:
            raise ValueError(
                f"strength, lambda_ce and lambda_dice must be >= 0, got {strength}, {lambda_ce}, {lambda_dice}."
            )
        self.scheme = scheme
        self.strength = float(strength)
        self.normalization = normalization
        self.dice = dice
        self.ce_voxels = ce_voxels
        self.include_background = include_background
        self.lambda_ce = float(lambda_ce)
        self.lambda_dice = float(lambda_dice)
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        risk: torch.Tensor | None = None,
        foreground_voxels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            logits: ``[B, C, *spatial]`` network outputs before softmax.
            labels: ``[B, 1, *spatial]`` class indices in ``[0, C)`` (any numeric dtype).
            risk: ``[B, 1, *spatial]`` transfer risk in ``[0, 1]``; ``None`` means uniform weights.
            foreground_voxels: ``[B]`` foreground voxel count of the whole case each sample comes from (``>= 0``);
                required for ``normalization="foreground"``, ignored for ``"voxels"``.

        Returns:
            A scalar tensor.

        Raises:
            ValueError: shapes that do not fit, or ``normalization="foreground"`` without ``foreground_voxels``.
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
        loss = logits.new_zeros(())
        if self.lambda_ce > 0:
            normaliser = self._normaliser(logits, foreground_voxels)
            loss = self.lambda_ce * self._weighted_ce(logits, labels, weights, normaliser)
        if self.lambda_dice > 0:
            dice_weights = weights if self.dice == "weighted" else None
            loss = loss + self.lambda_dice * self._soft_dice(logits, labels, dice_weights)
        return loss

    def _normaliser(self, logits: torch.Tensor, foreground_voxels: torch.Tensor | None) -> torch.Tensor:
        """``N_b`` as float ``[B]`` on the logits' device (see the class docstring)."""
        sample_voxels = float(logits[0, 0].numel())
        dtype = torch.promote_types(logits.dtype, torch.float32)  # float16 cannot hold counts above 65504
        if self.normalization == "voxels":
            return torch.full((logits.shape[0],), sample_voxels, dtype=dtype, device=logits.device)
        if foreground_voxels is None:
            raise ValueError(
                "normalization='foreground' needs each sample's whole-case foreground voxel count "
                "(foreground_voxels [B]; the risk stage adds it to the datalist); use normalization='voxels' otherwise."
            )
        counts = torch.as_tensor(foreground_voxels, device=logits.device).reshape(-1).to(dtype)
        if counts.numel() != logits.shape[0] or (counts < 0).any():
            raise ValueError(
                f"foreground_voxels must hold one count >= 0 per sample ({logits.shape[0]}), got {counts.tolist()}."
            )
        return torch.where(counts > 0, counts, sample_voxels)

    def _weighted_ce(
        self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None, normaliser: torch.Tensor
    ) -> torch.Tensor:
        """Batch mean of per-sample weighted CE sums (over ``V_b``) over ``normaliser [B]``; ``weights`` None means
        all ones."""
        voxel_ce = F.cross_entropy(logits, labels[:, 0], reduction="none")  # [B, *spatial]
        if weights is not None:
            voxel_ce = weights[:, 0] * voxel_ce
        if self.ce_voxels == "foreground":
            voxel_ce = voxel_ce * (labels[:, 0] > 0)
        per_sample = voxel_ce.flatten(1).sum(dim=1)  # [B]
        return (per_sample / normaliser).mean().to(per_sample.dtype)

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
