"""A source model's weights as the bundle reads them, and how they are carried over into the target network.

Reading (:func:`read_source_state`): the source checkpoint is a ``state_dict`` (what this bundle and the Model Zoo
write as ``models/model.pt``), a dict holding one under ``key_in_ckpt`` (e.g. ``"model"``, ``"state_dict"``; without
``key_in_ckpt`` a ``"model"`` entry that is a dict is taken, as before 0.6), or a TorchScript file (its own weights;
the network is then ``torch.jit.load`` of the same file). A ``state_dict`` saved from a ``DistributedDataParallel``
wrapper (every key ``module.``-prefixed) loses the prefix. The file is only read, never changed.

Carrying the weights over (:func:`carry_over`), rule by rule:

- every parameter whose name and shape the target network shares is copied;
- **input channels** (the first convolution, the one parameter whose shapes differ in dimension 1 only, from
  the source's ``len(source_channels)`` to the target's ``len(target_channels)``), see :func:`adapt_input_weight`:
  a target channel whose modality the source also read keeps that modality's filters; any other channel gets the
  mean of the source's filters over its channels; then every filter is scaled by ``Cs_in / Ct_in`` so that
  ``sum_c W[:, c]``, the response to co-registered inputs of equal contrast, keeps its size (the rule timm uses to
  adapt RGB filters to other channel counts). With as many channels on both sides and no modality in common
  (a T1 source fine-tuned on FLAIR, the bundles' default transfer) the filters are copied as they are;
- **output head** (shapes that differ only where they hold the class count, ``Cs`` vs ``Ct``): re-initialised. With
  as many classes on both sides it is copied, whatever the source's output semantics (a sigmoid source's regions then
  start as the target's softmax classes; ``risk#dead_classes reinit`` re-initialises those the source says nothing
  about). With ``head_init leep`` the output layer is then set from the source's through the risk stage's LEEP table
  instead, whatever the class counts (:func:`leep_output_layer`: target class ``y`` starts as the ``P(z | y)``-weighted
  mean of the source's class units, :func:`~transrisk_components.method.head_init.leep_head`);
- anything else -- a missing or unexpected parameter, or another shape -- stops with one ``ValueError`` naming the
  first such layer, both shapes and the remedy. The checkpoint is not touched.

The risk stage feeds the source network by the same rule (:func:`default_source_inputs`): by position the target's
own images, by name the source's own modalities read from the target cases.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from transrisk_components.method.head_init import leep_head
from transrisk_components.utils.io import load_checkpoint

__all__ = [
    "HEAD_INITS",
    "adapt_input_weight",
    "carry_over",
    "default_source_inputs",
    "is_torchscript",
    "leep_output_layer",
    "positional",
    "read_source_state",
]

#: How the target's output layer starts when the network starts from the source (``head_init``): ``"random"``
#: (carried over by :func:`carry_over`'s rules: copied when the class counts agree, re-initialised otherwise) or
#: ``"leep"`` (:func:`leep_output_layer`).
HEAD_INITS = ("random", "leep")

logger = logging.getLogger(__name__)

_REMEDY = (
    "if the bundle made it, delete it and rerun the 'pretrain' stage; a checkpoint of yours must be a state_dict, a "
    "dict holding one (name the entry with key_in_ckpt) or a TorchScript file"
)


def is_torchscript(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive (``torch.jit.save``), not a pickled ``torch.save`` file."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def read_source_state(path: str | Path, key_in_ckpt: str | None = None) -> dict[str, torch.Tensor]:
    """The source weights in ``path`` as a ``state_dict`` on the CPU (see the module docstring).

    Args:
        path: the source checkpoint (``source_ckpt``).
        key_in_ckpt: the entry of a checkpoint dict that holds the ``state_dict`` (``None``: the file is the
            ``state_dict``, or holds one under ``"model"``).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unreadable file, ``key_in_ckpt`` absent, or no ``state_dict`` of tensors in it (names the file,
            the keys found and the remedy).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"source checkpoint not found: {path} (run the 'pretrain' stage, or fix --source_ckpt)")
    if is_torchscript(path):
        return {k: v.detach() for k, v in torch.jit.load(str(path), map_location="cpu").state_dict().items()}
    state = load_checkpoint(path, _REMEDY, map_location="cpu", weights_only=True)
    if key_in_ckpt is not None:
        if not isinstance(state, Mapping) or key_in_ckpt not in state:
            found = sorted(map(str, state)) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(
                f"source checkpoint {path} has no entry {key_in_ckpt!r} (key_in_ckpt); it holds {found}: name the "
                "entry that holds the state_dict, or pass key_in_ckpt None for a plain state_dict"
            )
        state = state[key_in_ckpt]
    elif isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = sorted(map(str, state))[:8] if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"source checkpoint {path} holds no state_dict of tensors (found {found}): {_REMEDY}")
    if all(str(k).startswith("module.") for k in state):
        state = {str(k)[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def positional(source_channels: Sequence[str], target_channels: Sequence[str]) -> bool:
    """Whether the source's input channels map onto the target's by position: as many, and no modality in common
    (a T1 source fine-tuned on FLAIR). Otherwise they map by modality name."""
    return len(source_channels) == len(target_channels) and not set(source_channels) & set(target_channels)


def default_source_inputs(source_channels: Sequence[str], target_channels: Sequence[str]) -> tuple[str, ...]:
    """Which of the target cases' modalities the source network reads in the risk stage, one per its input channel.

    The same rule as the weights' (:func:`positional`): by position, the target's own images (the bundles' default
    transfer: a T1 source sees the FLAIR target images); by name otherwise, the source's own modalities read from the
    target cases (the Zoo's 4-channel BraTS model sees the target cases' T1ce, T1, T2, FLAIR however few the target's
    channels are). A target case that lacks one of them stops the risk stage with an error naming it.
    """
    return tuple(target_channels) if positional(source_channels, target_channels) else tuple(source_channels)


@torch.no_grad()
def adapt_input_weight(
    weight: torch.Tensor, source_channels: Sequence[str], target_channels: Sequence[str]
) -> torch.Tensor:
    """The first convolution's ``weight [O, Cs_in, *k]`` for the target's input channels: ``[O, Ct_in, *k]``.

    Args:
        weight: the source's first-layer weight, one input channel per name of ``source_channels``.
        source_channels: the modalities the source's input channels read, in order.
        target_channels: the modalities of the target's input channels, in order.

    Returns:
        The adapted weight (a new tensor): the source's filters of the same modality, or their mean over the source
        channels where the source read no such modality, times ``Cs_in / Ct_in``; the weight itself unchanged when
        the lists are equal, or as long as each other and without a modality in common (see the module docstring).

    Raises:
        ValueError: ``weight`` does not have ``len(source_channels)`` input channels.
    """
    source, target = list(source_channels), list(target_channels)
    if weight.ndim < 3 or weight.shape[1] != len(source):
        raise ValueError(
            f"input-layer weight of shape {tuple(weight.shape)} does not have one input channel per source modality "
            f"{source}: set source_modality to what the source network reads"
        )
    if source == target or positional(source, target):
        return weight.clone()
    mean = weight.mean(dim=1)
    columns = [weight[:, source.index(name)] if name in source else mean for name in target]
    return torch.stack(columns, dim=1) * (len(source) / len(target))


def _differs_only_in(source: torch.Size, target: torch.Size, pairs: set[tuple[int, int]], dims: Sequence[int] | None) -> bool:
    """Whether two shapes of one rank differ, only in the dimensions ``dims`` (any when ``None``), by a pair in
    ``pairs``."""
    if len(source) != len(target) or source == target:
        return False
    differing = [(d, s, t) for d, (s, t) in enumerate(zip(source, target)) if s != t]
    return all((s, t) in pairs and (dims is None or d in dims) for d, s, t in differing)


def carry_over(
    network: nn.Module,
    state: Mapping[str, torch.Tensor],
    source_classes: int,
    target_classes: int,
    source_channels: Sequence[str],
    target_channels: Sequence[str],
    ckpt_path: str | Path,
) -> dict[str, list[str]]:
    """Load ``state`` (the source's weights) into ``network`` by the rules of the module docstring.

    Args:
        network: the target network, built with ``target_classes`` outputs and ``len(target_channels)`` inputs.
        state: the source ``state_dict`` (:func:`read_source_state`).
        source_classes: the source network's output channels.
        target_classes: ``network``'s output channels.
        source_channels: the modalities of the source's input channels, in order.
        target_channels: the modalities of ``network``'s input channels, in order.
        ckpt_path: the checkpoint ``state`` came from (named in messages).

    Returns:
        ``{"input": [names of the adapted input-layer parameters], "head": [names of the re-initialised ones]}``.

    Raises:
        ValueError: a parameter that cannot be carried over; names the layer, both shapes and the remedy.
    """
    own = network.state_dict()
    channel_pair = {(len(source_channels), len(target_channels))} - {(len(source_channels),) * 2}
    class_pair = {(source_classes, target_classes)} - {(source_classes,) * 2}
    loaded, adapted, head, misfits = {}, [], [], []
    for key in sorted(set(own) & set(state)):
        mine, theirs = own[key].shape, state[key].shape
        if mine == theirs:
            loaded[key] = state[key]
        elif channel_pair and len(mine) >= 3 and _differs_only_in(theirs, mine, channel_pair, dims=(1,)):
            loaded[key] = adapt_input_weight(state[key], source_channels, target_channels).to(own[key].dtype)
            adapted.append(key)
        elif class_pair and _differs_only_in(theirs, mine, class_pair, dims=None):
            head.append(key)
        else:
            misfits.append(f"layer {key} has shape {tuple(theirs)} in the checkpoint and {tuple(mine)} in the target network")
    misfits += [f"layer {key} is in the target network but not in the checkpoint" for key in sorted(set(own) - set(state))]
    misfits += [f"layer {key} is in the checkpoint but not in the target network" for key in sorted(set(state) - set(own))]
    if misfits:
        more = f" (and {len(misfits) - 1} more layers)" if len(misfits) > 1 else ""
        raise ValueError(
            f"source checkpoint {ckpt_path} does not fit the target network: {misfits[0]}{more}. Only the input "
            f"channels ({len(source_channels)} source {list(source_channels)} -> {len(target_channels)} target "
            f"{list(target_channels)}) and the classes ({source_classes} -> {target_classes}) may differ. Remedy: make "
            "network_def the source's architecture (its blocks and filters; in_channels follows target_modality, "
            "out_channels num_classes), set source_modality to the modalities the source reads and "
            "num_source_classes to its outputs, name the state_dict's entry with key_in_ckpt, or fine-tune from "
            "random weights (--target_init random). The checkpoint was not changed."
        )
    network.load_state_dict(loaded, strict=False)
    return {"input": adapted, "head": head}


@torch.no_grad()
def leep_output_layer(
    layer: nn.Module, name: str, state: Mapping[str, torch.Tensor], joint: torch.Tensor, ckpt_path: str | Path
) -> None:
    """Set the target's output layer from the source's through the LEEP joint (``head_init leep``).

    Target class ``y``'s output unit becomes ``W'_y = sum_z P(z | y) W_z``, ``b'_y = sum_z P(z | y) b_z`` over the
    source's units ``z`` (:func:`~transrisk_components.method.head_init.leep_head`): a copy, or a permutation, of the
    source's units when the mapping ``z -> y`` is one-to-one.

    Args:
        layer: the target network's output layer (a convolution, transposed too, or a linear layer with ``Ct``
            outputs), changed in place.
        name: its name, the same in the source ``state`` (``<name>.weight``, ``<name>.bias``).
        state: the source ``state_dict`` (:func:`read_source_state`).
        joint: ``P(y, z)`` of the target training cases under the source, ``[Ct, Cs]`` (the risk stage's
            :meth:`~transrisk_components.bundle.stages.risk.RiskStage.joint`).
        ckpt_path: the checkpoint ``state`` came from (named in messages).

    Raises:
        ValueError: the source has no such layer, its output units are not the ``Cs`` of ``joint``, the target's are
            not its ``Ct``, one of the two has a bias and the other not, or the layer is a grouped transposed
            convolution.
    """
    out_dim = 1 if isinstance(layer, nn.modules.conv._ConvTransposeNd) else 0
    if out_dim == 1 and layer.groups != 1:
        raise ValueError(f"head_init leep: output layer {name} is a grouped transposed convolution, its units cannot be mixed")
    weight, bias = state.get(f"{name}.weight"), state.get(f"{name}.bias")
    if weight is None:
        raise ValueError(f"head_init leep: source checkpoint {ckpt_path} has no output layer {name}.weight")
    num_target, num_source = joint.shape
    if weight.shape[out_dim] != num_source or layer.weight.shape[out_dim] != num_target:
        raise ValueError(
            f"head_init leep: output layer {name} has {weight.shape[out_dim]} units in {ckpt_path} and "
            f"{layer.weight.shape[out_dim]} in the target network, but the risk stage's P(y, z) is {num_target} target "
            f"x {num_source} source classes: num_source_classes must be the source's outputs"
        )
    if (bias is None) != (layer.bias is None):
        raise ValueError(f"head_init leep: output layer {name} has a bias in one of source and target only")
    new_weight, new_bias = leep_head(weight.movedim(out_dim, 0), bias, joint)
    layer.weight.copy_(new_weight.movedim(0, out_dim))
    if new_bias is not None:
        layer.bias.copy_(new_bias)
