"""k-fold choice (``safe#folds``): the folds partition the pooled target-train and target-val cases, every candidate is
scored on every pooled case by the run that held out its fold, the chosen candidate is retrained on all of them and
installed, the report states the cost; wrong settings stop before any stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bundle_helpers import TINY, exception_messages, run_bundle, validation_dice

from transrisk_components.bundle.workflow.selection import choose_candidate
from transrisk_components.data.scenario import ALL_FOLDS, Scenario, fold_ids
from transrisk_components.utils.io import file_sha256

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = {"plain": {"risk#enabled": False}, "scratch": {"target_init": "random", "risk#enabled": False}}
SETTINGS = {**TINY, "safe#enabled": True, "num_target_train": 2, "num_target_val": 1, "safe#candidates": CANDIDATES}


def _scenario(phantom: str, tmp_path: Path, fold: int | str | None, folds: int = 3) -> Scenario:
    return Scenario("fets", phantom, str(tmp_path), "t1", "flair", "multiclass", "multiclass", num_target_train=4,
                    num_target_val=2, num_target_test=2, num_source=3, folds=folds, fold=fold, check_inputs=False)


def _ids(scenario: Scenario, split: str) -> list[str]:
    return [case["case_id"] for case in scenario.split(split)]


def test_folds_partition_the_pooled_cases_and_leave_source_and_test_alone(tmp_path: Path, fets_phantom: str) -> None:
    ordinary = _scenario(fets_phantom, tmp_path, None)
    pooled = set(_ids(ordinary, "target_train")) | set(_ids(ordinary, "target_val"))
    held_out = []
    for fold in range(3):
        scenario = _scenario(fets_phantom, tmp_path, fold)
        train, val = _ids(scenario, "target_train"), _ids(scenario, "target_val")
        assert len(val) == 2 and not set(train) & set(val) and set(train) | set(val) == pooled
        assert _ids(scenario, "target_test") == _ids(ordinary, "target_test")
        assert _ids(scenario, "source") == _ids(ordinary, "source")
        held_out += val
    assert sorted(held_out) == sorted(pooled), "every pooled case is held out exactly once"
    everything = _scenario(fets_phantom, tmp_path, ALL_FOLDS)
    assert set(_ids(everything, "target_train")) == pooled == set(_ids(everything, "target_val"))
    ordinary.write_splits()
    assert sorted(sum(json.loads((tmp_path / "splits.json").read_text())["folds"], [])) == sorted(pooled)


@pytest.mark.parametrize("fold", [3, -1, "two"])
def test_a_fold_outside_the_folds_is_refused(tmp_path: Path, fets_phantom: str, fold: object) -> None:
    with pytest.raises(ValueError, match="fold"):
        _scenario(fets_phantom, tmp_path, fold)


def test_fold_ids_refuse_more_folds_than_cases() -> None:
    assert fold_ids(["a", "b", "c", "d", "e"], 2) == [["a", "c", "e"], ["b", "d"]]
    with pytest.raises(ValueError, match="2 <= folds <= the 3 pooled"):
        fold_ids(["a", "b", "c"], 4)


@pytest.mark.parametrize(("overrides", "named"), [
    ({"safe#folds": 4}, "safe#folds 4: must be at most the 3 pooled target cases"),
    ({"safe#folds": 2, "safe#racing": True}, "does not race them"),
    ({"safe#folds": 0}, "safe#folds 0"),
    ({"fold": 1}, "fold: set by safe transfer"),
    ({"safe#folds": 2, "safe#enabled": False}, "safe#folds 2: k-fold choice chooses among safe transfer's candidates"),
])
def test_wrong_fold_settings_stop_before_any_stage(tmp_path: Path, fets_phantom: str, overrides: dict, named: str) -> None:
    with pytest.raises(Exception) as error:
        run_bundle(REPO / "bundles" / "fets" / "configs", "training", tmp_path, fets_phantom, SETTINGS, **overrides)
    assert named in exception_messages(error.value)
    assert not (tmp_path / "models").exists(), "nothing trained"


def test_k_fold_choice_scores_every_pooled_case_and_installs_the_retrained_choice(tmp_path: Path, fets_phantom: str) -> None:
    run_bundle(REPO / "bundles" / "fets" / "configs", "training", tmp_path, fets_phantom, SETTINGS, **{"safe#folds": 3})
    report = json.loads((tmp_path / "eval" / "transfer_report.json").read_text())
    splits = json.loads((tmp_path / "eval" / "splits.json").read_text())
    pooled = sorted(sum(splits["folds"], []))
    assert len(pooled) == 3 and report["validation_cases"] == 3
    assert report["k_fold"]["folds"] == 3 and report["k_fold"]["runs"] == 7 and report["k_fold"]["runs_with_one_split"] == 2
    validation: dict[str, dict[str, dict[str, float]]] = {}
    for name in CANDIDATES:
        for fold, held_out in enumerate(splits["folds"]):
            per_case = (tmp_path / "eval" / "candidates" / name / f"fold{fold + 1}" / "validation" / "metrics_per_case.csv")
            cases = validation_dice(per_case)
            assert set(cases) == set(held_out), f"{name} fold {fold + 1} is validated on its own fold"
            validation.setdefault(name, {}).update(cases)
    assert report["chosen"] == choose_candidate(validation).chosen, "the choice is the rule's over the pooled cases"
    chosen = report["chosen"]
    final = tmp_path / "models" / "candidates" / chosen / ALL_FOLDS / "model.pt"
    assert file_sha256(tmp_path / "models" / "model.pt") == file_sha256(final), "the retrained choice is installed"
    other = next(n for n in CANDIDATES if n != chosen)
    assert not (tmp_path / "models" / "candidates" / other / ALL_FOLDS / "model.pt").exists(), "only the choice is retrained"
    record = json.loads((tmp_path / "models" / "safe.fingerprint.json").read_text())
    assert record["chosen"] == chosen and record["run"] == f"{chosen}/{ALL_FOLDS}"
    final_record = json.loads((final.parent / "finetune.fingerprint.json").read_text())
    assert {key.split("/")[0] for key in final_record["inputs"]} == set(pooled), "retrained on every pooled case"
    assert sorted(final_record["splits"]["target_train"]) == pooled
    assert final_record["config"]["val_interval"] == "$@max_epochs", "validated once, at its last epoch: nothing held out"
    for name in CANDIDATES:
        models = set()
        for fold, held_out in enumerate(splits["folds"]):
            record = json.loads((tmp_path / "models" / "candidates" / name / f"fold{fold + 1}" / "finetune.fingerprint.json").read_text())
            assert record["splits"]["target_val"] == held_out, f"{name} fold {fold + 1} holds out its own fold"
            assert not set(record["splits"]["target_train"]) & set(held_out), "and never trains on it"
            assert record["config"]["val_interval"] == SETTINGS["val_interval"], "a fold run validates as configured"
            models.add(file_sha256(tmp_path / "models" / "candidates" / name / f"fold{fold + 1}" / "model.pt"))
        assert len(models) == 3, f"{name}: each fold is a training run of its own, not a copy of another fold's"
