"""MONAI dictionary transforms and the pre/post-processing chains of the bundles.

Image, label and risk map are loaded by one reader (the dataset's) and every spatial transform lists all
three keys, so a risk value stays on the voxel it was computed for through cropping and flipping.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    RandCropByPosNegLabeld,
    RandFlipd,
    SpatialPadd,
)

from transrisk_components.data.registry import get_dataset

__all__ = ["TaskLabelsd", "eval_transforms", "load_transforms", "train_transforms"]


class TaskLabelsd(MapTransform):
    """Map raw dataset labels (e.g. FeTS 0/1/2/4) to a task's class indices (e.g. 0..3, or 0/1 for ``"WT"``).

    Args:
        keys: label keys; each value is ``[1, *spatial]`` raw labels.
        dataset: registry name (``"fets"``, ``"iseg"``).
        task: one of the dataset's tasks.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection, dataset: str, task: str, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spec = get_dataset(dataset)
        if task not in self.spec.tasks:
            raise ValueError(f"unknown {dataset} task {task!r}; valid tasks: {list(self.spec.tasks)}")
        self.task = task

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.spec.task_labels(d[key], self.task)
        return d


def load_transforms(dataset: str, task: str, keys: Sequence[str] = ("image", "label")) -> list:
    """Deterministic loading: read ``keys`` channel-first, map labels to ``task``, z-score the image.

    Output per case: ``image [C, *S]`` float, ``label [1, *S]`` int64 (if in ``keys``), ``risk [1, *S]`` float
    (if in ``keys``), all MetaTensors on the image grid with the file's affine.
    """
    spec = get_dataset(dataset)
    keys = list(keys)
    chain = [
        LoadImaged(keys=keys, reader=spec.reader, image_only=True, ensure_channel_first=True),
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
    ]
    if "label" in keys:
        chain.append(TaskLabelsd(keys="label", dataset=dataset, task=task))
    chain.append(EnsureTyped(keys=keys, track_meta=True))
    return chain


def train_transforms(
    dataset: str,
    task: str,
    patch_size: Sequence[int],
    with_risk: bool = False,
    num_samples: int = 1,
) -> Compose:
    """Training chain: :func:`load_transforms`, then random foreground/background patches and flips.

    Spatial transforms act on ``image``, ``label`` and (``with_risk``) ``risk`` together. Output per sample:
    ``image [C, *patch]``, ``label [1, *patch]``, ``risk [1, *patch]``.
    """
    keys = ["image", "label", "risk"] if with_risk else ["image", "label"]
    return Compose(
        [
            *load_transforms(dataset, task, keys),
            SpatialPadd(keys=keys, spatial_size=patch_size),
            RandCropByPosNegLabeld(
                keys=keys, label_key="label", spatial_size=patch_size, pos=1, neg=1, num_samples=num_samples
            ),
            *(RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in range(len(patch_size))),
        ]
    )


def eval_transforms(dataset: str, task: str, with_label: bool = True) -> Compose:
    """Validation / inference chain: :func:`load_transforms` on the whole volume (no cropping)."""
    return Compose(load_transforms(dataset, task, ["image", "label"] if with_label else ["image"]))
