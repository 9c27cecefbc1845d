"""Engine adapters: the risk map's path from the batch into the loss.

How the risk map reaches the loss: the training pipeline packs the map as the image's last channel
(``ConcatItemsd`` at the end of ``train#intensity_transforms``, cached, before the patches are cut), so the batch dict holds ``image
[B, C + 1, *S]`` next to ``label`` (and ``foreground_voxels [B]``, the whole case's foreground count that the risk
stage puts into each datalist entry and the crop transforms copy into every patch). The map is cropped, flipped,
collated and moved to the device as part of the image, by the same calls: it cannot fall out of step with the
image, and it costs the loader no transform of its own (a separate ``risk`` key cost each patch a crop, three flips,
a copy and a collation -- a third of the plain loader's time, 2026-12-07). :func:`prepare_risk_batch` splits the
channels again where the batch already is (on the device) and hands the trainer ``(image, RiskTargets(label, risk,
foreground_voxels))`` as its targets, and :class:`TransferLoss` unpacks them into ``RiskWeightedLoss(logits, label,
risk, foreground_voxels)``, which turns the map into weights. MONAI's ``SupervisedTrainer`` passes targets to the
loss untouched, so no trainer code is replaced.

The trainers' batches reach the network as plain tensors (:func:`prepare_plain_batch`): a ``MetaTensor`` carries
its metadata through every layer, which cost 10-20% of a CPU fine-tuning iteration in the FeTS bundle (measured
with one thread on a 48^3 SegResNet step) for nothing the training uses -- the numbers are the same to the bit.
The evaluators keep MONAI's default, so predictions keep their image's metadata.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from monai.data import MetaTensor
from monai.engines.utils import default_prepare_batch
from monai.losses import DiceCELoss
from torch import nn

from transrisk_components.method.losses import RiskWeightedLoss

__all__ = [
    "RiskTargets",
    "TransferLoss",
    "batch_preparer",
    "prepare_plain_batch",
    "prepare_risk_batch",
    "training_loss",
]


class RiskTargets(NamedTuple):
    """Targets of one fine-tuning batch: ``label [B, 1, *S]`` class indices, ``risk [B, 1, *S]`` in [0, 1] and
    ``foreground_voxels [B]``, each sample's whole-case foreground count (``None`` when the batch has none)."""

    label: torch.Tensor
    risk: torch.Tensor
    foreground_voxels: torch.Tensor | None = None


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` without MONAI metadata: a ``MetaTensor``'s plain ``torch.Tensor`` (same storage, no copy)."""
    return tensor.as_tensor() if isinstance(tensor, MetaTensor) else tensor


def prepare_plain_batch(
    batchdata: dict[str, torch.Tensor], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """``prepare_batch`` for ``SupervisedTrainer``: MONAI's default ``(image [B, C, *S], label [B, 1, *S])`` on
    ``device``, as plain tensors (see the module notes)."""
    image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
    return _plain(image), _plain(label)


def prepare_risk_batch(
    batchdata: dict[str, torch.Tensor],
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    *,
    image_channels: int,
    **kwargs: Any,
) -> tuple[torch.Tensor, RiskTargets]:
    """``prepare_batch`` for ``SupervisedTrainer`` with the risk map packed as the image's last channel (see the
    module notes): ``batchdata["image"] [B, image_channels + 1, *S]`` goes to ``device`` in one piece and is split
    there into ``(image [B, image_channels, *S], RiskTargets(label, risk [B, 1, *S], foreground_voxels))``, plain
    tensors; ``image`` and ``risk`` are views of the moved batch (no copy). ``foreground_voxels`` is ``None`` when
    the batch has no such entry.

    Raises:
        ValueError: the image does not have ``image_channels + 1`` channels (no map was packed into it: the datalist
            lacks the risk stage's maps, or the pipeline lacks the packing transform).
    """
    packed, label = prepare_plain_batch(batchdata, device, non_blocking, **kwargs)
    if packed.shape[1] != image_channels + 1:
        raise ValueError(
            f"the batch's image has {packed.shape[1]} channels, expected {image_channels} image channels and the risk "
            "map as the last one: fine-tuning with risk.enabled needs the risk stage's datalist and the training "
            "pipeline's ConcatItemsd(keys=['image', 'risk'], name='image')"
        )
    foreground = batchdata.get("foreground_voxels")
    if foreground is not None:
        foreground = torch.as_tensor(foreground).to(device=device, non_blocking=non_blocking)
    return packed[:, :image_channels], RiskTargets(label, packed[:, image_channels:], foreground)


def batch_preparer(risk_enabled: bool, image_channels: int) -> Callable:
    """The trainer's ``prepare_batch``: :func:`prepare_risk_batch` for images of ``image_channels`` channels with
    the map packed behind them, :func:`prepare_plain_batch` without the map (the source trainer, plain
    fine-tuning)."""
    return functools.partial(prepare_risk_batch, image_channels=image_channels) if risk_enabled else prepare_plain_batch


class TransferLoss(nn.Module):
    """Adapts a segmentation loss to the trainer's targets: a label tensor, or :class:`RiskTargets`.

    Args:
        loss: ``RiskWeightedLoss`` (called with ``(logits, label, risk, foreground_voxels)``) or a plain loss such as
            ``DiceCELoss`` (called with ``(logits, label)``; only valid without a risk map).
    """

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, targets: torch.Tensor | RiskTargets) -> torch.Tensor:
        """Loss of ``logits [B, C, *S]`` against a ``label [B, 1, *S]`` or ``RiskTargets``; a scalar."""
        if isinstance(targets, RiskTargets):
            if not isinstance(self.loss, RiskWeightedLoss):
                raise TypeError(f"a risk map was given but the loss {type(self.loss).__name__} cannot use it")
            return self.loss(logits, targets.label, targets.risk, targets.foreground_voxels)
        return self.loss(logits, targets)


def training_loss(risk_enabled: bool, **risk_loss_args: Any) -> TransferLoss:
    """The fine-tuning loss: ``RiskWeightedLoss(**risk_loss_args)`` with the map, else MONAI ``DiceCELoss``.

    Args:
        risk_enabled: fine-tune with the transfer risk map.
        risk_loss_args: ``RiskWeightedLoss`` arguments (``scheme``, ``strength``, ``normalization``, ...);
            ignored for plain fine-tuning.
    """
    if risk_enabled:
        return TransferLoss(RiskWeightedLoss(**risk_loss_args))
    return TransferLoss(DiceCELoss(to_onehot_y=True, softmax=True))
