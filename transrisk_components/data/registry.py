"""Per-dataset descriptions, so bundle code stays dataset-agnostic.

A bundle config names a dataset (``"fets"`` / ``"iseg"``) and a task; everything else — modalities,
label values, classes, reader, datalist, label conversion, phantom — comes from its :class:`DatasetSpec`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from transrisk_components.data import fets, iseg
from transrisk_components.data.phantom_fets import make_fets_phantom
from transrisk_components.data.phantom_iseg import make_iseg_phantom

__all__ = ["DATASETS", "DatasetSpec", "get_dataset", "num_classes"]


@dataclass(frozen=True)
class DatasetSpec:
    """What transrisk needs to know about one dataset.

    Attributes:
        name: ``"fets"`` or ``"iseg"``.
        modalities: image modalities in default channel order.
        label_values: raw label values including background 0.
        tasks: task -> class names including background; ``len`` gives the number of output channels.
        reader: MONAI reader class name used for image **and** label (never mix readers).
        datalist: ``(root, modalities=..., **kw) -> list[dict]`` with ``case_id``, ``image``, ``label``.
        task_labels: ``(label, task) -> classes``: raw labels to int64 task classes, numpy or torch.
        raw_labels: ``(class_map, task) -> raw labels``: the inverse, for writing predictions.
        make_phantom: ``(out_dir, subjects, seed, shape=None, full_size=False, ...) -> root`` that
            ``datalist`` accepts.
        default_phantom_subjects: number of subjects in the bundles' default phantom.
    """

    name: str
    modalities: tuple[str, ...]
    label_values: tuple[int, ...]
    tasks: dict[str, tuple[str, ...]]
    reader: str
    datalist: Callable[..., list[dict]]
    task_labels: Callable
    raw_labels: Callable
    make_phantom: Callable[..., Path]
    default_phantom_subjects: int


DATASETS: dict[str, DatasetSpec] = {
    "fets": DatasetSpec(
        name="fets",
        modalities=fets.FETS_MODALITIES,
        label_values=fets.FETS_LABEL_VALUES,
        tasks=fets.FETS_TASKS,
        reader="NibabelReader",
        datalist=fets.fets2021_datalist,
        task_labels=fets.fets_task_labels,
        raw_labels=fets.fets_raw_labels,
        make_phantom=make_fets_phantom,
        default_phantom_subjects=24,
    ),
    "iseg": DatasetSpec(
        name="iseg",
        modalities=iseg.ISEG_MODALITIES,
        label_values=iseg.ISEG_LABEL_VALUES,
        tasks=iseg.ISEG_TASKS,
        reader="NibabelReader",
        datalist=iseg.iseg2019_datalist,
        task_labels=iseg.iseg_task_labels,
        raw_labels=iseg.iseg_raw_labels,
        make_phantom=make_iseg_phantom,
        default_phantom_subjects=10,
    ),
}


def get_dataset(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` called ``name``; ``ValueError`` listing the valid names otherwise."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {sorted(DATASETS)}")
    return DATASETS[name]


def num_classes(spec: DatasetSpec, task: str) -> int:
    """Number of output classes (background included) of ``task``; ``ValueError`` naming valid tasks."""
    if task not in spec.tasks:
        raise ValueError(f"unknown {spec.name} task {task!r}; valid tasks: {sorted(spec.tasks)}")
    return len(spec.tasks[task])
