"""The segmentation networks the bundles offer, built from a name so source and target stay alike."""

from __future__ import annotations

import math
from collections.abc import Sequence

from monai.networks.nets import SegResNet, UNet
from torch import nn

__all__ = ["NETWORKS", "segmentation_network"]

NETWORKS: tuple[str, ...] = ("segresnet", "unet")


def segmentation_network(
    name: str,
    in_channels: int,
    out_channels: int,
    width: int = 8,
    depth: int = 3,
) -> nn.Module:
    """A 3D segmentation network mapping ``[B, in_channels, *S]`` to logits ``[B, out_channels, *S]``.

    Args:
        name: ``"segresnet"`` (default of the bundles) or ``"unet"``.
        in_channels: image channels (modalities).
        out_channels: task classes including background.
        width: channels of the first level; each deeper level doubles it (SegResNet's group norm uses
            ``gcd(8, width)`` groups).
        depth: number of resolution levels (``S`` must be divisible by ``2 ** (depth - 1)``).

    Raises:
        ValueError: unknown ``name`` or non-positive sizes.
    """
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose one of {NETWORKS}")
    if min(in_channels, out_channels, width, depth) < 1:
        raise ValueError(
            f"in_channels, out_channels, width and depth must be >= 1, got {in_channels}, {out_channels}, {width}, {depth}"
        )
    if name == "segresnet":
        blocks_down: Sequence[int] = (1, *([2] * (depth - 1)))
        return SegResNet(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=out_channels,
            init_filters=width,
            blocks_down=tuple(blocks_down),
            blocks_up=(1,) * (depth - 1),
            norm=("GROUP", {"num_groups": math.gcd(8, width)}),
        )
    return UNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(width * 2**level for level in range(depth)),
        strides=(2,) * (depth - 1),
        num_res_units=1,
    )
