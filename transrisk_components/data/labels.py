"""Label-value helpers shared by the dataset modules: remapping raw label values to task classes and back.

Nothing here knows a dataset: :mod:`~transrisk_components.data.fets` and :mod:`~transrisk_components.data.iseg`
each build one :class:`TaskLabelTables` from their own lookup tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

__all__ = ["LabelT", "TaskLabelTables", "format_values", "remap_labels", "spatial_shape", "unexpected_values"]

LabelT = TypeVar("LabelT", np.ndarray, torch.Tensor)

def format_values(values: np.ndarray) -> str:
    """Format label values compactly: integral floats print as ints, at most 10 values."""
    shown = [int(v) if float(v).is_integer() else float(v) for v in values[:10]]
    more = f" (+{len(values) - 10} more)" if len(values) > 10 else ""
    return f"{shown}{more}"


def unexpected_values(label: np.ndarray | torch.Tensor, allowed: Sequence[int]) -> np.ndarray:
    """Sorted unique values of ``label`` (any shape) that are not in ``allowed``; empty if none."""
    if isinstance(label, torch.Tensor):
        known = torch.isin(label, torch.as_tensor(list(allowed), dtype=label.dtype, device=label.device))
        return torch.unique(label[~known]).cpu().numpy()
    known = np.isin(label, list(allowed))
    return np.unique(label[~known])


def remap_labels(label: LabelT, table: Mapping[int, int], what: str) -> LabelT:
    """Map label values through a lookup table, refusing values the table does not know.

    Args:
        label: label array of any shape (e.g. ``[1, H, W, D]`` or ``[B, 1, H, W, D]``), a numpy array or
            a torch tensor; integer or float dtype (labels read from NIfTI are often float).
        table: raw value -> new value; every value in ``label`` must be a key.
        what: name of the mapping, used in the error message (e.g. ``"FeTS task 'ET'"``).

    Returns:
        Same shape and container type as ``label`` (a ``MetaTensor`` stays a ``MetaTensor``), dtype int64.

    Raises:
        TypeError: ``label`` is neither a numpy array nor a torch tensor.
        ValueError: ``label`` holds values that are not keys of ``table``; the message lists them.
    """
    if not isinstance(label, (np.ndarray, torch.Tensor)):
        raise TypeError(f"{what}: expected a numpy array or torch tensor, got {type(label).__name__}")
    bad = unexpected_values(label, tuple(table))
    if bad.size:
        raise ValueError(f"{what}: unexpected label values {format_values(bad)}; expected {sorted(table)}")
    if isinstance(label, torch.Tensor):
        out = torch.zeros_like(label, dtype=torch.int64)
    else:
        out = np.zeros(label.shape, dtype=np.int64)
    for raw, new in table.items():
        if new:
            out[label == raw] = new
    return out


def spatial_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Shape without trailing singleton dimensions beyond the third (Analyze headers may carry a 4th)."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    return tuple(int(d) for d in dims)


@dataclass(frozen=True)
class TaskLabelTables:
    """The raw label values of one dataset <-> the classes of each of its tasks.

    Attributes:
        dataset: name used in error messages, e.g. ``"FeTS"``.
        to_task: task -> (raw value -> class index); every raw value of the dataset is a key.
        to_raw: task -> (class index -> raw value), for writing predictions; a class that unites several raw
            values maps to a region marker.
    """

    dataset: str
    to_task: Mapping[str, Mapping[int, int]]
    to_raw: Mapping[str, Mapping[int, int]]

    def _check_task(self, task: str) -> None:
        if task not in self.to_task:
            raise ValueError(f"unknown {self.dataset} task {task!r}; valid tasks: {sorted(self.to_task)}")

    def task_labels(self, label: LabelT, task: str) -> LabelT:
        """Raw labels (any shape, e.g. ``[1, H, W, D]``; numpy or torch; int or float) -> int64 task classes of
        the same shape and container type.

        Raises:
            ValueError: unknown task, or raw values the dataset does not have (listed in the message).
        """
        self._check_task(task)
        return remap_labels(label, self.to_task[task], f"{self.dataset} task {task!r}")

    def raw_labels(self, class_map: LabelT, task: str) -> LabelT:
        """Inverse of :meth:`task_labels` for predictions: task classes -> int64 raw label values, same shape.

        Raises:
            ValueError: unknown task, or values that are not classes of the task.
        """
        self._check_task(task)
        return remap_labels(class_map, self.to_raw[task], f"{self.dataset} task {task!r} classes")
