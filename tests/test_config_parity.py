"""The two bundles' configs are one pipeline: they differ only in an agreed list of dataset-specific ids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

#: The ids (``#``-joined paths) in which the FeTS and iSeg ``train.json`` may differ, and why.
DATASET_SPECIFIC = {
    "dataset_name",  # the dataset registry entry
    "dataset_dir",  # the challenge's folder name
    "source_modality", "target_modality",  # t1/flair vs T1/T2
    "num_target_train", "num_target_val", "num_target_test",  # iSeg has 10 labelled subjects
    "partition_csv", "source_partitions", "target_partitions",  # FeTS institutions (cross-site splits)
    "scenario#partition_csv", "scenario#source_partitions", "scenario#target_partitions",
    "learning_rate", "source_epochs", "max_epochs",  # tuned per dataset
    "source#dataset#cache_num#bytes_per_voxel",  # the cache budget per voxel of each dataset's images
    "input_pattern",  # inference: which files of an input folder are images (iSeg: the T2 .hdr files)
}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a#b#0": leaf}`` for every leaf of a config (lists by index)."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in items:
        flat.update(_flatten(item, f"{prefix}#{key}" if prefix else str(key)))
    return flat


@pytest.mark.parametrize("name", ["train.json", "evaluate.json", "inference.json", "multi_gpu_train.json", "rank_sources.json", "export_risk.json"])
def test_fets_and_iseg_configs_differ_only_in_dataset_specific_ids(name: str) -> None:
    fets, iseg = (_flatten(json.loads((REPO / "bundles" / b / "configs" / name).read_text())) for b in ("fets", "iseg"))
    differing = {k for k in fets.keys() | iseg.keys() if fets.get(k, "<absent>") != iseg.get(k, "<absent>")}
    assert differing <= DATASET_SPECIFIC, f"{name}: ids that differ between the bundles without being agreed: {sorted(differing - DATASET_SPECIFIC)}"
