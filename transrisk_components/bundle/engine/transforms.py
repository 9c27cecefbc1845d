"""The one dictionary transform the bundles need that MONAI lacks: raw dataset labels -> a task's classes.

Every other transform of the bundles (loading, cropping to the brain, foreground/background indices, patch
sampling, flips, normalisation) is MONAI's own and is spelled out in the configs' ``preprocessing`` lists.
Image, label and risk map go through the same spatial transforms there (the risk map is one more key), so a
risk value stays on the voxel it was computed for.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import get_equivalent_dtype

from transrisk_components.data.registry import get_dataset

__all__ = ["TaskLabelsd"]


class TaskLabelsd(MapTransform):
    """Map raw dataset labels (e.g. FeTS 0/1/2/4) to a task's class indices (e.g. 0..3, or 0/1 for ``"WT"``).

    Args:
        keys: label keys; each value is ``[1, *spatial]`` raw labels (any numeric dtype).
        dataset: registry name (``"fets"``, ``"iseg"``).
        task: one of the dataset's tasks.
        dtype: dtype of the class map; ``uint8`` (default) keeps cached labels at one byte per voxel (the
            losses and metrics convert to ``int64`` where they index).
        allow_missing_keys: skip absent keys.

    Raises:
        ValueError: unknown task; at call time, raw values the dataset does not know (named in the message).
    """

    def __init__(
        self,
        keys: KeysCollection,
        dataset: str,
        task: str,
        dtype: torch.dtype | str = torch.uint8,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spec = get_dataset(dataset)
        if task not in self.spec.tasks:
            raise ValueError(f"unknown {dataset} task {task!r}; valid tasks: {list(self.spec.tasks)}")
        self.task = task
        self.dtype = get_equivalent_dtype(dtype, torch.Tensor)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            classes = self.spec.task_labels(d[key], self.task)
            d[key] = classes.to(self.dtype) if isinstance(classes, torch.Tensor) else torch.as_tensor(classes, dtype=self.dtype)
        return d
