"""Datasets for transrisk: FeTS2021 and iSeg-2019 datalists in their native layouts, label conversion
per task, input checks, and look-alike phantoms written in the same layouts.

Bundle code stays dataset-agnostic through :func:`get_dataset`, which returns a :class:`DatasetSpec`.
The phantom generators (:mod:`transrisk_components.data.phantom`) import nilearn and matplotlib only
when used.
"""

from transrisk_components.data.checks import check_cases
from transrisk_components.data.fets import fets2021_datalist, fets_raw_labels, fets_task_labels, read_fets_partitions
from transrisk_components.data.iseg import iseg2019_datalist, iseg_raw_labels, iseg_task_labels
from transrisk_components.data.registry import DATASETS, DatasetSpec, get_dataset, num_classes

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "check_cases",
    "fets2021_datalist",
    "fets_raw_labels",
    "fets_task_labels",
    "get_dataset",
    "iseg2019_datalist",
    "iseg_raw_labels",
    "iseg_task_labels",
    "num_classes",
    "read_fets_partitions",
]
