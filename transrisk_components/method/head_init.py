"""A target output head initialised from the source head through the LEEP table ``P(y | z)`` -> ``P(z | y)``.

When the target's classes ``y`` are not the source's classes ``z`` the source head cannot be copied. LEEP's joint
``P(y, z)`` over the target training voxels (source prediction ``z``, target label ``y``) says which source classes a
target class looks like to the source model. Our rule starts target class ``y``'s output unit as the ``P(z | y)``
-weighted mean of the source's output units::

    W'_y = sum_z P(z | y) W_z        b'_y = sum_z P(z | y) b_z        P(z | y) = P(y, z) / P(y)

It is exact when the mapping ``z -> y`` is one-to-one (each target class is seen as one source class, and each
source class as one target class): ``P(z | y)`` is then a permutation matrix and the rule copies (permutes) the
source's units, so a relabelled copy of the source task starts at the source model itself. Otherwise it is a
heuristic: a target class the source splits over several of its classes starts as their mixture. A target class
with no voxel in the statistics (``P(y) = 0``) gets the source marginal ``P(z)`` as its weights: the mean unit of
what the source predicts on the target.

The rule needs one output unit per source state ``z``: a softmax source. A sigmoid source has ``k`` channels but
``2^k`` states (:mod:`~transrisk_components.method.source_outputs`), so it has no unit per state to mix.
"""

from __future__ import annotations

import torch

__all__ = ["leep_head"]


def leep_head(
    weight: torch.Tensor, bias: torch.Tensor | None, joint: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The target head's weights and bias from the source head's and the LEEP joint (module docstring).

    Args:
        weight: the source output layer's weight, class dimension first: ``[Cs, *rest]`` (a convolution's
            ``[Cs, C_in, *k]``, a linear layer's ``[Cs, C_in]``).
        bias: the source output layer's bias ``[Cs]``, or ``None``.
        joint: ``P(y, z)``, ``[Ct, Cs]``, non-negative with a positive sum (counts or probabilities: each row is
            normalised to ``P(z | y)``).

    Returns:
        ``weight' [Ct, *rest]`` and ``bias' [Ct]`` (``None`` without ``bias``), in ``weight``'s dtype and device.

    Raises:
        ValueError: ``joint`` not ``[Ct, Cs]`` with ``Cs`` the rows of ``weight`` (or of ``bias``), negative or not
            finite, or all zero.
    """
    if joint.ndim != 2 or joint.shape[1] != weight.shape[0]:
        raise ValueError(
            f"joint P(y, z) must be [Ct, Cs] with Cs = {weight.shape[0]} source classes (the head's output units), "
            f"got shape {tuple(joint.shape)}"
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must be [Cs] = [{weight.shape[0]}], got shape {tuple(bias.shape)}")
    joint = joint.to(torch.float64)
    if not torch.isfinite(joint).all() or (joint < 0).any() or joint.sum() <= 0:
        raise ValueError("joint P(y, z) must be finite, non-negative and not all zero")
    prior = joint.sum(dim=1, keepdim=True)  # [Ct, 1]
    marginal = joint.sum(dim=0) / joint.sum()  # [Cs]
    given_y = torch.where(prior > 0, joint / prior.clamp_min(torch.finfo(joint.dtype).tiny), marginal)  # [Ct, Cs]
    mixing = given_y.to(weight.device)
    new_weight = torch.tensordot(mixing, weight.to(torch.float64), dims=([1], [0])).to(weight.dtype)  # [Ct, *rest]
    new_bias = None if bias is None else (mixing @ bias.to(torch.float64)).to(bias.dtype)  # [Ct]
    return new_weight, new_bias
