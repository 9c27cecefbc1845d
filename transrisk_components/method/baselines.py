"""Established fine-tuning alternatives the risk map is compared against, ported to 3D segmentation.

- :class:`L2SPLoss` -- L2-SP (Li, Grandvalet & Davoine, ICML 2018): a segmentation loss plus a pull of the
  transferred weights towards their source values and plain weight decay on newly initialised ones.
- :class:`TopKDiceCELoss` -- cross-entropy over the hardest ``k`` percent of voxels of each image (online hard
  example mining, as in TopK loss of Wu et al. 2016 / nnU-Net's variants) plus soft Dice.
- Focal loss is MONAI's own ``DiceFocalLoss``; the bundles configure it directly.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

__all__ = ["L2SPLoss", "TopKDiceCELoss"]


class L2SPLoss(nn.Module):
    """``loss(logits, labels) + alpha/2 * ||w_S - w_S^0||^2 + beta/2 * ||w_new||^2``.

    ``w_S`` are the network parameters whose name and shape match the source checkpoint (their source values
    ``w_S^0`` are kept as buffers); ``w_new`` are the rest (e.g. a re-initialised output head).

    Args:
        loss: the segmentation loss, called as ``loss(logits [B,C,*S], labels [B,1,*S])``.
        network: the network being fine-tuned (its parameters are read at every call).
        source_ckpt: path of the source weights (a state_dict, or a dict with a ``"model"`` state_dict).
        alpha: strength of the pull towards the source weights.
        beta: weight decay on parameters without a source value.
    """

    def __init__(
        self, loss: nn.Module, network: nn.Module, source_ckpt: str | Path, alpha: float = 0.01, beta: float = 0.01
    ) -> None:
        super().__init__()
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got {alpha} and {beta}.")
        path = Path(source_ckpt)
        if not path.is_file():
            raise FileNotFoundError(f"L2-SP needs the source checkpoint, not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
        self.loss = loss
        self.alpha, self.beta = float(alpha), float(beta)
        self._network = [network]  # a list keeps the network out of this module's parameters and state_dict
        self._anchored = [
            name for name, p in network.named_parameters() if name in state and state[name].shape == p.shape
        ]
        for index, name in enumerate(self._anchored):
            self.register_buffer(f"source_{index}", state[name].detach().clone().float(), persistent=False)

    def penalty(self) -> torch.Tensor:
        """The L2-SP regulariser for the network's current parameters (a scalar)."""
        anchored = set(self._anchored)
        total = torch.zeros((), device=next(self._network[0].parameters()).device)
        for index, name in enumerate(self._anchored):
            parameter = self._network[0].get_parameter(name)
            total = total + 0.5 * self.alpha * (parameter - getattr(self, f"source_{index}")).pow(2).sum()
        for name, parameter in self._network[0].named_parameters():
            if name not in anchored:
                total = total + 0.5 * self.beta * parameter.pow(2).sum()
        return total

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Segmentation loss of ``logits [B,C,*S]`` vs ``labels [B,1,*S]`` plus :meth:`penalty`; a scalar."""
        return self.loss(logits, labels) + self.penalty()


class TopKDiceCELoss(nn.Module):
    """Mean cross-entropy of the ``k_percent`` hardest voxels of each image, plus MONAI's soft Dice loss.

    Args:
        k_percent: share of voxels (by highest CE) kept per image, in ``(0, 100]``.
        lambda_ce: weight of the top-k CE term.
        lambda_dice: weight of the Dice term.
    """

    def __init__(self, k_percent: float = 10.0, lambda_ce: float = 1.0, lambda_dice: float = 1.0) -> None:
        super().__init__()
        if not 0 < k_percent <= 100:
            raise ValueError(f"k_percent must be in (0, 100], got {k_percent}.")
        self.k_percent = float(k_percent)
        self.lambda_ce, self.lambda_dice = float(lambda_ce), float(lambda_dice)
        self.dice = DiceLoss(to_onehot_y=True, softmax=True)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of ``logits [B,C,*S]`` against ``labels [B,1,*S]`` class indices; a scalar."""
        voxel_ce = F.cross_entropy(logits, labels[:, 0].long(), reduction="none").flatten(1)  # [B, N]
        k = max(1, math.ceil(voxel_ce.shape[1] * self.k_percent / 100))
        top_ce = voxel_ce.topk(k, dim=1).values.mean()
        return self.lambda_ce * top_ce + self.lambda_dice * self.dice(logits, labels)
