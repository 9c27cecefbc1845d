"""Which voxels the LEEP statistics and the risk maps cover."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["RISK_MASKS", "image_mask"]

#: Voxel masks of the LEEP statistics and maps: ``"nonzero"`` (the head) or ``"all"``.
RISK_MASKS = ("nonzero", "all")


def image_mask(image: torch.Tensor, rule: str, case_id: str = "?", path: Any = "?") -> torch.Tensor:
    """The voxels LEEP statistics cover: ``[1, 1, *S]`` bool from ``image [1, C, *S]``.

    ``rule="nonzero"``: voxels where any channel is nonzero (the head: the air ``NormalizeIntensityd(nonzero=True)``
    leaves at 0); ``"all"``: every voxel.

    Raises:
        ValueError: unknown rule, or no nonzero voxel (names the case and the image file).
    """
    if rule not in RISK_MASKS:
        raise ValueError(f"unknown risk mask {rule!r}; choose one of {RISK_MASKS}")
    if rule == "all":
        return torch.ones((image.shape[0], 1, *image.shape[2:]), dtype=torch.bool, device=image.device)
    mask = (image != 0).any(dim=1, keepdim=True)
    if not mask.any():
        raise ValueError(f"{case_id}: image {path} has no nonzero voxel to compute LEEP over")
    return mask
