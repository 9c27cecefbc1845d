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


#: The handlers every process of a multi-GPU run needs: loading the source weights, validating, and checkpointing.
ALL_PROCESS_HANDLERS = {
    "transrisk_components.bundle.engine.SourceWeights",
    "ValidationHandler",
    "transrisk_components.bundle.handlers.ResumableCheckpoints",
}


@pytest.mark.parametrize("bundle", ["fets", "iseg"])
def test_logging_handlers_are_disabled_by_name_on_processes_other_than_the_main_one(bundle: str) -> None:
    configs = REPO / "bundles" / bundle / "configs"
    train = json.loads((configs / "train.json").read_text())
    multi_gpu = json.loads((configs / "multi_gpu_train.json").read_text())
    assert train["is_main_process"] is True
    assert multi_gpu["is_main_process"] == "$dist.get_rank() == 0"
    assert not any(key.endswith("train_handlers") for key in multi_gpu), "handlers are chosen by _disabled_, not by position"
    for section in ("source", "train"):
        for handler in train[section]["handlers"]:
            if handler["_target_"] in ALL_PROCESS_HANDLERS:
                assert "_disabled_" not in handler, handler["_target_"]
            else:
                assert "not @is_main_process" in handler.get("_disabled_", ""), f"{section}: {handler['_target_']}"


@pytest.mark.parametrize("bundle", ["fets", "iseg"])
def test_a_renamed_risk_option_stops_the_run_naming_the_new_id(bundle: str) -> None:
    from monai.bundle import ConfigParser

    for config in ("train.json", "multi_gpu_train.json"):
        assert "@risk_options" in json.loads((REPO / "bundles" / bundle / "configs" / config).read_text())["initialize"]
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.json"))
    assert parser.get_parsed_content("risk_options")["map_normalization"] == "complement"
    parser["risk#normalization"] = "minmax"
    parser["risk#loss_normalization"] = "voxels"
    with pytest.raises(RuntimeError) as stopped:  # MONAI wraps the component's ValueError
        parser.get_parsed_content("risk_options", lazy=False)
    assert isinstance(stopped.value.__cause__, ValueError)
    assert ("risk#normalization is now risk#map_normalization; risk#loss_normalization is now risk#ce_denominator"
            in str(stopped.value.__cause__))
