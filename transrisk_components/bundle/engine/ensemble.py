"""An ensemble of fine-tuned networks of one architecture as one network: the mean of their softmax outputs.

Safe transfer (``safe#ensembles``) scores ensembles of its candidates beside the candidates themselves; when one is
chosen, ``models/model.pt`` is its state dict, every member's weights under ``members.<i>.``, and the configs that load it
(``evaluate.json``, ``inference.json``) build the network with :func:`network_for_checkpoint`, which sees how many
members the file holds. Inference costs one forward pass per member.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from transrisk_components.utils.io import atomic_torch_save, load_checkpoint

__all__ = ["SoftmaxEnsemble", "checkpoint_members", "network_for_checkpoint", "write_ensemble_checkpoint"]

#: The key of a checkpoint that holds more than the network (``{"model": state_dict, "optimizer": ...}``); the
#: bundles' ``model.pt`` is the network's state dict itself.
MODEL_KEY = "model"
_MEMBER = re.compile(r"^members\.(\d+)\.")
_REMEDY = "delete it and run training again (the candidates' models are reused)"


class SoftmaxEnsemble(nn.Module):
    """Networks whose softmax outputs are averaged.

    ``forward(x)``: ``x`` ``(B, C_in, *spatial)`` -> the log of the members' mean softmax, ``(B, C_out, *spatial)``:
    its argmax is the ensemble's label, its softmax the mean probabilities, so every consumer of a segmentation
    network's logits (argmax post-processing, sliding-window inference, TorchScript export) uses it unchanged.

    Args:
        members: networks with the same input and output channels.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs two members or more, got {len(members)}")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(1, device=x.device)
        for member in self.members:
            total = total + torch.softmax(member(x).float(), dim=1)
        return torch.log((total / len(self.members)).clamp_min(1e-12))


def checkpoint_members(path: str | os.PathLike) -> int:
    """How many ensemble members the bundle checkpoint ``path`` holds: the number of ``members.<i>.`` prefixes, or 1
    for a single network -- and for a missing or unreadable file, which the config's checkpoint loader then names with
    its own remedy."""
    try:
        weights = _network_weights(load_checkpoint(path, _REMEDY, map_location="cpu", weights_only=True))
    except (FileNotFoundError, ValueError):
        return 1
    indices = {int(match.group(1)) for key in weights if (match := _MEMBER.match(str(key)))}
    return len(indices) or 1


def _network_weights(checkpoint: object) -> dict:
    """The network's state dict in a loaded checkpoint: the checkpoint itself, or its ``"model"`` entry."""
    if not isinstance(checkpoint, dict):
        return {}
    nested = checkpoint.get(MODEL_KEY)
    return nested if isinstance(nested, dict) else checkpoint


def network_for_checkpoint(
    network: nn.Module, checkpoint: str | os.PathLike, device: torch.device | str = "cpu",
    memory_format: torch.memory_format | None = None,
) -> nn.Module:
    """``network`` for a single-network checkpoint, or an ensemble of copies of it for an ensemble checkpoint, on
    ``device`` (and in ``memory_format`` when given); the weights are loaded by the config's checkpoint loader."""
    members = checkpoint_members(checkpoint)
    built = network if members == 1 else SoftmaxEnsemble([copy.deepcopy(network) for _ in range(members)])
    return built.to(device, memory_format=memory_format) if memory_format is not None else built.to(device)


def write_ensemble_checkpoint(member_checkpoints: Sequence[str | os.PathLike], path: str | os.PathLike) -> Path:
    """Write the ensemble of the bundle checkpoints ``member_checkpoints`` (each a network's state dict, or
    ``{"model": state_dict}``, of one architecture) to ``path`` atomically as the state dict of a
    :class:`SoftmaxEnsemble` (``{"members.<i>.<name>": tensor}``); return ``path``.

    Raises:
        ValueError: fewer than two members, or members of different architectures (names the files).
    """
    if len(member_checkpoints) < 2:
        raise ValueError(f"an ensemble needs two members or more, got {list(map(str, member_checkpoints))}")
    states = [_network_weights(load_checkpoint(p, _REMEDY, map_location="cpu", weights_only=True)) for p in member_checkpoints]
    shapes = [{k: tuple(v.shape) for k, v in state.items()} for state in states]
    differing = [str(p) for p, s in zip(member_checkpoints, shapes) if s != shapes[0]]
    if differing:
        raise ValueError(f"ensemble members of different architectures: {differing} differ from {member_checkpoints[0]}")
    weights = {f"members.{i}.{name}": tensor for i, state in enumerate(states) for name, tensor in state.items()}
    return atomic_torch_save(weights, path)
