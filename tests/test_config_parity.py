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
    "source#dataset#cache_num#bytes_per_voxel",  # the cache budget per voxel of each dataset's images (source.json)
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


CONFIGS = ["train.json", "source.json", "risk.json", "evaluate.json", "inference.json", "multi_gpu_train.json",
           "rank_sources.json", "export_risk.json", "real_data.json"]


@pytest.mark.parametrize("name", CONFIGS)
def test_fets_and_iseg_configs_differ_only_in_dataset_specific_ids(name: str) -> None:
    fets, iseg = (_flatten(json.loads((REPO / "bundles" / b / "configs" / name).read_text())) for b in ("fets", "iseg"))
    differing = {k for k in fets.keys() | iseg.keys() if fets.get(k, "<absent>") != iseg.get(k, "<absent>")}
    assert differing <= DATASET_SPECIFIC, f"{name}: ids that differ between the bundles without being agreed: {sorted(differing - DATASET_SPECIFIC)}"


#: The handlers every process of a multi-GPU run needs: loading the source weights, validating, checkpointing, and
#: the evaluator's model saver (ignite writes on rank 0 only; building it on every rank keeps its collectives in step).
ALL_PROCESS_HANDLERS = {
    "transrisk_components.bundle.engine.source_weights.SourceWeights",
    "ValidationHandler",
    "transrisk_components.bundle.handlers.checkpoints.ResumableCheckpoints",
}


@pytest.mark.parametrize("bundle", ["fets", "iseg"])
def test_logging_handlers_are_disabled_by_name_on_processes_other_than_the_main_one(bundle: str) -> None:
    configs = REPO / "bundles" / bundle / "configs"
    train = json.loads((configs / "train.json").read_text())
    source = json.loads((configs / "source.json").read_text())
    multi_gpu = json.loads((configs / "multi_gpu_train.json").read_text())
    assert train["is_main_process"] is True
    assert multi_gpu["is_main_process"] == "$dist.get_rank() == 0"
    assert not any(key.endswith("handlers") for key in multi_gpu), "handlers are chosen by _disabled_, not by position"
    handler_lists = {"train": train["train"]["handlers"], "source": source["source#handlers"],
                     "validate": [h for h in train["validate"]["handlers"] if isinstance(h, dict)]}
    for section, handlers in handler_lists.items():
        for handler in handlers:
            if handler["_target_"] in ALL_PROCESS_HANDLERS:
                assert "_disabled_" not in handler, handler["_target_"]
            else:
                assert "not @is_main_process" in handler.get("_disabled_", ""), f"{section}: {handler['_target_']}"


@pytest.mark.parametrize("bundle", ["fets", "iseg"])
def test_the_run_ids_call_the_stage_graph_and_the_configs_know_nothing_of_each_other(bundle: str) -> None:
    """The order of the stages lives in Python: the run ids call it; no config refers to another's run ids or to a
    stage's outputs by expression."""
    configs = REPO / "bundles" / bundle / "configs"
    train = json.loads((configs / "train.json").read_text())
    assert train["safe"]["enabled"] is True and train["run"] == "%training"
    for run_id in ("training", "pretrain", "risk_map", "finetune", "safe_training"):
        assert train[run_id] == f"$entry.run_stages('{run_id}', @bundle_root)"
    texts = {name: (configs / name).read_text() for name in CONFIGS}
    for name, text in texts.items():
        for marker in ("risk_stage_needed", "fingerprint#", "@safe#stage", "fine_tune", "as_bool"):
            assert marker not in text, f"{name} holds {marker!r}"


def test_train_json_is_zoo_sized() -> None:
    """The file a user opens first: at most 300 lines and 50 components (45 at 0.8.0, 47
    since the map travels as the image's last channel: ``ConcatItemsd`` and a ``DeleteItemsd``); no config
    file of a bundle over 300 lines."""
    for bundle in ("fets", "iseg"):
        configs = REPO / "bundles" / bundle / "configs"
        train = (configs / "train.json").read_text()
        assert len(train.splitlines()) <= 300 and train.count('"_target_"') <= 50, bundle
        for path in configs.glob("*.json"):
            assert len(path.read_text().splitlines()) <= 300, path
