"""A per-region composite of fine-tuned networks of one architecture as one network: each evaluation region from the
network that segments it best.

Safe transfer (``safe#composites``) scores the composite beside the candidates when the best candidate on validation
differs between regions (FeTS: ET / TC / WT, nested; iSeg: CSF / GM / WM, disjoint). Each region is the one its
assigned member segments, an outer region deciding before the regions inside it (so nested regions stay nested) and
the more probable class taking a voxel two members claim. ``models/model.pt`` of a kept composite is its state
dict: every member's weights under ``members.<i>.`` and the two buffers ``signatures`` and ``region_member``;
:func:`network_for_checkpoint` builds a composite, an ensemble or the single network from what the file holds.
Inference costs one pass of the inferer per member.

The members' labels must be the ones their validation Dice measured: under sliding-window inference, the argmax of
each member's window-averaged logits over the whole volume. Composing inside each window and averaging the composed
scores is not that (the regions no longer are their members'), so the bundles' evaluation and inference configs run
their inferer through :class:`MemberwiseInferer`, which runs it once per member and composes the whole-volume
outputs (:meth:`RegionComposite.compose`). ``forward`` composes what it is given: whole volumes (an exported
composite run on windows composes per window).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.inferers import Inferer
from torch import nn

from transrisk_components.bundle.engine import ensemble
from transrisk_components.bundle.engine.ensemble import _network_weights  # the layout both kinds of checkpoint share
from transrisk_components.utils.io import atomic_torch_save, load_checkpoint

__all__ = ["MemberwiseInferer", "RegionComposite", "composite_shape", "network_for_checkpoint", "write_composite_checkpoint"]

SIGNATURES = "signatures"
REGION_MEMBER = "region_member"
_REMEDY = "delete it and run training again (the candidates' models are reused)"


class RegionComposite(nn.Module):
    """Each region as its own member segments it; nesting kept, conflicts to the more probable region.

    Member ``m``'s region masks are those of its own label (the argmax of its softmax), as its validation Dice
    measured them; region ``r`` takes the mask ``b_r`` of the member assigned to it. A voxel's class is the one whose
    region memberships (its row of ``signatures``) agree best with those masks, each region counting with the weight
    ``w_r = 1 + sum of the weights of the regions inside it`` (FeTS: ET 1, TC 2, WT 4), so an outer region decides
    before the ones inside it: a voxel outside the WT member's tumour is background whatever the TC and ET members
    say, and inside it the TC member decides, then the ET member. Disjoint regions (iSeg) weigh the same; where two
    members claim one voxel, or where masks match two classes equally, the class that the assigned members' region
    probabilities make most likely wins (a product over the regions, weighted below one agreement).

    ``forward(x)``: ``x`` ``(B, C_in, *spatial)`` -> class scores ``(B, C, *spatial)``, whose argmax is the
    composite's label: :meth:`compose` of the members' outputs on ``x``. Under a sliding window, compose the members'
    window-averaged outputs instead (:class:`MemberwiseInferer`).

    Args:
        members: networks with the same input channels and ``C`` output classes.
        signatures: ``(C, R)``, 1 where class ``c`` belongs to region ``r``.
        region_member: ``(R,)``, the index into ``members`` of the member assigned to each region.
    """

    def __init__(self, members: Sequence[nn.Module], signatures: torch.Tensor, region_member: torch.Tensor) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"a composite needs two members or more, got {len(members)}")
        if signatures.ndim != 2 or region_member.shape != (signatures.shape[1],):
            raise ValueError(f"signatures (C, R) and region_member (R,) disagree: {tuple(signatures.shape)}, "
                             f"{tuple(region_member.shape)}")
        if set(region_member.tolist()) != set(range(len(members))):
            raise ValueError(f"region_member {region_member.tolist()} must use each of the {len(members)} members")
        self.members = nn.ModuleList(members)
        self.register_buffer(SIGNATURES, signatures.float())
        self.register_buffer(REGION_MEMBER, region_member.long())

    def _region_weights(self) -> torch.Tensor:
        """``(R,)``: 1 plus the weights of the regions strictly inside each region (smaller regions first)."""
        signatures = self.signatures
        regions = signatures.shape[1]
        sizes = signatures.sum(0)
        weights = torch.zeros(regions, device=signatures.device)
        order = torch.argsort(sizes)
        for index in range(regions):
            r = int(order[index])
            inside = torch.zeros(1, device=signatures.device)
            for s in range(regions):
                if s != r and bool((signatures[:, s] <= signatures[:, r]).all()) and bool(sizes[s] < sizes[r]):
                    inside = inside + weights[s]
            weights[r] = 1 + inside.squeeze(0)
        return weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.compose([member(x) for member in self.members])

    def compose(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """Class scores ``(B, C, *spatial)`` from each member's logits ``(B, C, *spatial)``, in member order."""
        if len(outputs) != len(self.members):
            raise ValueError(f"compose needs one output per member ({len(self.members)}), got {len(outputs)}")
        signatures = self.signatures
        masks: list[torch.Tensor] = []
        probabilities: list[torch.Tensor] = []
        for logits in outputs:  # (B, C, *spatial) -> (B, R, *spatial) region masks and probabilities
            softmax = torch.softmax(logits.float(), dim=1)
            label = torch.zeros_like(softmax).scatter_(1, softmax.argmax(dim=1, keepdim=True), 1.0)
            masks.append(torch.einsum("bc...,cr->br...", label, signatures))
            probabilities.append(torch.einsum("bc...,cr->br...", softmax, signatures))
        picks = [int(self.region_member[r]) for r in range(signatures.shape[1])]
        inside = torch.stack([masks[m][:, r] for r, m in enumerate(picks)], dim=1)  # (B, R, *spatial), 0 or 1
        region = torch.stack([probabilities[m][:, r] for r, m in enumerate(picks)], dim=1).clamp(1e-6, 1 - 1e-6)
        weights = self._region_weights()
        agreement = (torch.einsum("br...,cr->bc...", inside, signatures * weights)
                     + torch.einsum("br...,cr->bc...", 1 - inside, (1 - signatures) * weights))
        likelihood = (torch.einsum("br...,cr->bc...", torch.log(region), signatures)
                      + torch.einsum("br...,cr->bc...", torch.log1p(-region), 1 - signatures))
        return agreement + likelihood / (1 - signatures.shape[1] * math.log(1e-6))  # |likelihood term| < 1


class MemberwiseInferer(Inferer):
    """``inferer`` run once per member of a :class:`RegionComposite`, whose :meth:`~RegionComposite.compose` then
    combines the whole-volume outputs; any other network goes to ``inferer`` as it is.

    Args:
        inferer: the inferer a single network is run with (e.g. MONAI's ``SlidingWindowInferer``).
    """

    def __init__(self, inferer: Inferer) -> None:
        super().__init__()
        self.inferer = inferer

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``inputs`` ``(B, C_in, *spatial)`` -> ``(B, C, *spatial)``: the network's outputs under ``inferer``."""
        if isinstance(network, RegionComposite):
            return network.compose([self.inferer(inputs, member, *args, **kwargs) for member in network.members])
        return self.inferer(inputs, network, *args, **kwargs)


def composite_shape(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """(members, classes, regions) of the composite checkpoint ``path``, or ``None`` for any other file (a single
    network, an ensemble, a missing or unreadable file: the config's checkpoint loader names those)."""
    try:
        weights = _network_weights(load_checkpoint(path, _REMEDY, map_location="cpu", weights_only=True))
    except (FileNotFoundError, ValueError):
        return None
    if SIGNATURES not in weights or REGION_MEMBER not in weights:
        return None
    classes, regions = weights[SIGNATURES].shape
    return int(weights[REGION_MEMBER].max()) + 1, int(classes), int(regions)


def network_for_checkpoint(
    network: nn.Module, checkpoint: str | os.PathLike, device: torch.device | str = "cpu",
    memory_format: torch.memory_format | None = None,
) -> nn.Module:
    """``network`` for a single-network checkpoint; a :class:`RegionComposite` or a
    :class:`~.ensemble.SoftmaxEnsemble` of copies of it for a composite or ensemble checkpoint; on ``device`` (and in
    ``memory_format`` when given). The weights are loaded by the config's checkpoint loader."""
    shape = composite_shape(checkpoint)
    if shape is None:
        return ensemble.network_for_checkpoint(network, checkpoint, device, memory_format)
    members, classes, regions = shape
    built = RegionComposite([copy.deepcopy(network) for _ in range(members)], torch.zeros(classes, regions),
                            torch.arange(regions) % members)
    return built.to(device, memory_format=memory_format) if memory_format is not None else built.to(device)


def write_composite_checkpoint(
    member_checkpoints: Sequence[str | os.PathLike], signatures: torch.Tensor, region_member: Sequence[int],
    path: str | os.PathLike,
) -> Path:
    """Write the composite of the bundle checkpoints ``member_checkpoints`` (one architecture) to ``path`` atomically
    as the state dict of a :class:`RegionComposite`; return ``path``.

    Args:
        member_checkpoints: the members' checkpoints, in member order.
        signatures: ``(C, R)`` class-in-region table.
        region_member: for each region, the index of its member in ``member_checkpoints``.

    Raises:
        ValueError: fewer than two members, a member no region uses, or members of different architectures.
    """
    if sorted(set(region_member)) != list(range(len(member_checkpoints))) or len(member_checkpoints) < 2:
        raise ValueError(f"a composite needs two members or more, each assigned a region: members "
                         f"{list(map(str, member_checkpoints))}, region_member {list(region_member)}")
    states = [_network_weights(load_checkpoint(p, _REMEDY, map_location="cpu", weights_only=True))
              for p in member_checkpoints]
    shapes = [{k: tuple(v.shape) for k, v in state.items()} for state in states]
    differing = [str(p) for p, s in zip(member_checkpoints, shapes) if s != shapes[0]]
    if differing:
        raise ValueError(f"composite members of different architectures: {differing} differ from {member_checkpoints[0]}")
    weights = {f"members.{i}.{name}": tensor for i, state in enumerate(states) for name, tensor in state.items()}
    weights[SIGNATURES] = signatures.float()
    weights[REGION_MEMBER] = torch.as_tensor(list(region_member), dtype=torch.long)
    return atomic_torch_save(weights, path)
