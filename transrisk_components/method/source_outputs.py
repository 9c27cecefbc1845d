"""The source model's categorical ``z`` for LEEP: from softmax classes, or from independent sigmoid regions.

LEEP needs ``p_source(z | v)``, a distribution over a finite set of source states ``z`` at every voxel ``v``
(probabilities that sum to 1). A softmax source gives it directly: ``z`` is its class (``Cs`` states).

A sigmoid source (multi-label: ``k`` output channels, each the probability that the voxel lies in one region, e.g.
the Model Zoo BraTS model's TC, WT, ET) has no such distribution: its channels do not sum to 1, and re-normalising
them would invent a decision rule the model never had. The state is instead the **on/off combination** of the
``k`` regions, ``z = (b_1, ..., b_k)`` with ``b_j`` in {0, 1}, encoded as the index ``z = sum_j b_j 2^(j-1)`` (channel
1 is the lowest bit), and the channels are read as independent Bernoulli variables, as the sigmoid model was
trained (one binary cross-entropy per channel)::

    p(z | v) = prod_j p_j(v)^(b_j) (1 - p_j(v))^(1 - b_j),      z = 0 .. 2^k - 1

These ``2^k`` probabilities are non-negative and sum to 1 (the product of ``k`` sums ``p_j + (1 - p_j) = 1``). For
TC, WT, ET, ``z = 0`` is "no region", ``z = 2`` "WT only" (edema), ``z = 7`` "all three"; states that the nesting ET
within TC within WT rules out (e.g. ET without WT) get whatever probability the model gives them, and LEEP's
``P(y | z)`` learns what they mean on the target labels.
"""

from __future__ import annotations

import torch

__all__ = ["SOURCE_OUTPUTS", "num_source_states", "sigmoid_states", "source_states"]

#: How a source network's output channels become probabilities (see the module docstring).
SOURCE_OUTPUTS = ("softmax", "sigmoid")

#: Largest number of sigmoid channels turned into on/off combinations (2^k states).
_MAX_SIGMOID_CHANNELS = 8


def _check_output(output: str) -> None:
    if output not in SOURCE_OUTPUTS:
        raise ValueError(f"unknown source output {output!r}; choose one of {SOURCE_OUTPUTS}")


def num_source_states(num_outputs: int, output: str) -> int:
    """The number of source states ``z``: ``num_outputs`` for ``"softmax"``, ``2 ** num_outputs`` for ``"sigmoid"``.

    Raises:
        ValueError: unknown ``output``, fewer than one channel, or more than 8 sigmoid channels (256 states).
    """
    _check_output(output)
    if num_outputs < 1:
        raise ValueError(f"a source network needs at least one output channel, got {num_outputs}")
    if output == "softmax":
        return num_outputs
    if num_outputs > _MAX_SIGMOID_CHANNELS:
        raise ValueError(
            f"a sigmoid source with {num_outputs} channels has 2^{num_outputs} on/off states: at most "
            f"{_MAX_SIGMOID_CHANNELS} channels are supported"
        )
    return 2**num_outputs


def sigmoid_states(probs: torch.Tensor) -> torch.Tensor:
    """The on/off combinations of ``k`` independent regions: ``[B, 2^k, *S]`` from ``probs [B, k, *S]`` in [0, 1].

    State ``z`` has region ``j`` (channel ``j``, from 0) on when bit ``j`` of ``z`` is set; its probability is the
    product over the regions of ``p_j`` (on) or ``1 - p_j`` (off). Every voxel's states sum to 1.
    """
    states = torch.ones_like(probs[:, :1])  # [B, 1, *S]: no region decided yet
    for j in range(probs.shape[1]):
        on = probs[:, j : j + 1]
        states = torch.cat([states * (1.0 - on), states * on], dim=1)  # bit j: the upper half has region j on
    return states


def source_states(logits: torch.Tensor, output: str) -> torch.Tensor:
    """``p_source(z | v)``: ``[B, Z, *S]`` float32 from the source network's ``logits [B, C, *S]``.

    ``"softmax"``: the softmax over the ``C`` channels (``Z = C``); ``"sigmoid"``: :func:`sigmoid_states` of the
    channels' sigmoids (``Z = 2^C``).
    """
    _check_output(output)
    logits = logits.float()
    if output == "softmax":
        return torch.softmax(logits, dim=1)
    num_source_states(logits.shape[1], output)
    return sigmoid_states(torch.sigmoid(logits))
