"""Per-dataset descriptions, so bundle code stays dataset-agnostic.

A bundle config names a dataset (``"fets"`` / ``"iseg"``) and a task; everything else — modalities,
label values, classes, reader, datalist, label conversion, phantom — comes from its :class:`DatasetSpec`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import transrisk_components.data.fets as fets
import transrisk_components.data.iseg as iseg

__all__ = ["ALL_MODALITIES", "DATASETS", "DatasetSpec", "get_dataset", "modality_channels", "num_classes"]

#: The modality value that selects every modality of a dataset, in its :attr:`DatasetSpec.all_order`.
ALL_MODALITIES = "all"


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
        all_order: the channel order of the modality value ``"all"`` (:func:`modality_channels`): the order the
            dataset's public models expect (FeTS: the Model Zoo's ``brats_mri_segmentation``, T1ce, T1, T2, FLAIR);
            empty for ``modalities``.
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
    all_order: tuple[str, ...] = ()


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
        all_order=("t1ce", "t1", "t2", "flair"),
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


def modality_channels(
    spec: DatasetSpec, modality: str | Sequence[str], role: str = "modality", distinct: bool = True
) -> tuple[str, ...]:
    """The image channels a modality setting selects, in channel order.

    Args:
        spec: the dataset.
        modality: one modality name (``"flair"``: one channel, the bundles' default), ``"all"`` (every modality, in
            :attr:`DatasetSpec.all_order`; FeTS: ``t1ce, t1, t2, flair``, the Model Zoo's BraTS order), or a list of
            names in the channel order wanted (``["t1ce", "flair"]``).
        role: the config id named in errors (``"source_modality"``, ``"target_modality"``).
        distinct: refuse a name given twice (a network's input channels); ``False`` for the images that feed another
            network's channels (``source_inputs``), where one image may feed several.

    Returns:
        The modality names, one per input channel (``len`` is the network's ``in_channels``).

    Raises:
        ValueError: an unknown or repeated name, or an empty list (names ``role`` and the valid names).
    """
    if isinstance(modality, str):
        names = tuple(spec.all_order or spec.modalities) if modality == ALL_MODALITIES else (modality,)
    else:
        names = tuple(modality)
    unknown = [m for m in names if m not in spec.modalities]
    if unknown or not names or (distinct and len(set(names)) != len(names)):
        raise ValueError(
            f"{role} {modality!r} is not a {spec.name} modality setting: give one of {list(spec.modalities)}, "
            f"{ALL_MODALITIES!r}, or a list of distinct ones in channel order"
            + (f" (unknown: {unknown})" if unknown else "")
        )
    return names
