"""Per-dataset descriptions, so bundle code stays dataset-agnostic.

A bundle config names a dataset (``"fets"`` / ``"iseg"``) and a task; everything else — modalities,
label values, classes, reader, datalist, label conversion, phantom — comes from its :class:`DatasetSpec`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import transrisk_components.data.fets as fets
import transrisk_components.data.iseg as iseg

__all__ = ["DATASETS", "DatasetSpec", "get_dataset", "num_classes"]


def _lazy(module: str, function: str) -> Callable[..., Path]:
    """A phantom maker imported on first call: the generators pull in scipy and nilearn, which a run on real
    data never needs."""

    def make(*args, **kwargs) -> Path:
        return getattr(importlib.import_module(module), function)(*args, **kwargs)

    make.__name__ = make.__qualname__ = function
    make.__doc__ = f"``{module}.{function}``, imported when first called."
    return make


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
        co_registered: every case lies on one common grid in one anatomical space (FeTS: the SRI24 atlas,
            240x240x155 at 1 mm), so that a voxel index means the same place in every case -- what the
            location-wise risk map (``risk#map location``) needs. iSeg-2019 subjects share an array shape but each
            infant is in its own space.
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
    co_registered: bool


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
        make_phantom=_lazy("transrisk_components.data.phantom.fets", "make_fets_phantom"),
        default_phantom_subjects=24,
        co_registered=True,
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
        make_phantom=_lazy("transrisk_components.data.phantom.iseg", "make_iseg_phantom"),
        default_phantom_subjects=10,
        co_registered=False,
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
