"""Safe transfer (``training``, ``safe_training``): candidate starts, the choice on validation, the report, the chosen
model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bundle_helpers import TINY, exception_messages, run_bundle, validation_dice

from transrisk_components.bundle.workflow.selection import choose_candidate

from transrisk_components.utils.io import file_sha256

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = ("risk_map", "plain", "scratch")


def _run(run_id: str, root: Path, phantom: str, configs: tuple[str, ...] = ("train.json",), **overrides):
    return run_bundle(REPO / "bundles" / "fets" / "configs", run_id, root, phantom, {**TINY, "num_target_val": 2},
                      configs, **overrides)


@pytest.fixture(scope="module")
def safe_run(tmp_path_factory: pytest.TempPathFactory, fets_phantom: str) -> Path:
    root = tmp_path_factory.mktemp("safe")
    _run("training", root, fets_phantom, **{"safe#enabled": "true"})  # the bundles' default (TINY switches it off)
    return root


def test_safe_training_chooses_on_validation_and_installs_the_chosen_model(safe_run: Path) -> None:
    report = json.loads((safe_run / "eval" / "transfer_report.json").read_text())
    assert list(report["candidates"]) == list(CANDIDATES)
    # the choice is the rule's on the candidates' own per-case validation files
    validation = {n: validation_dice(safe_run / "eval" / "candidates" / n / "validation" / "metrics_per_case.csv")
                  for n in CANDIDATES}
    assert all(len(cases) == 2 and set(next(iter(cases.values()))) == {"ET", "TC", "WT"} for cases in validation.values())
    assert report["chosen"] == choose_candidate(validation).chosen
    chosen_model = safe_run / "models" / "candidates" / report["chosen"] / "model.pt"
    assert file_sha256(safe_run / "models" / "model.pt") == file_sha256(chosen_model)
    provenance = json.loads((safe_run / "models" / "safe.fingerprint.json").read_text())
    assert provenance["chosen"] == report["chosen"] and provenance["model_sha256"] == file_sha256(chosen_model)
    assert provenance["candidates"]["scratch"]["fingerprint"]["config"]["target_init"] == "random"
    for entry in report["candidates"].values():
        low, high = entry["score_ci"]
        assert low <= entry["score"] <= high and set(entry["regions"]) == {"ET", "TC", "WT"}
    assert "negative_transfer" in report and (safe_run / "eval" / "transfer_report.png").stat().st_size > 5_000


def test_the_chosen_model_is_what_evaluating_uses(safe_run: Path, fets_phantom: str) -> None:
    _run("evaluating", safe_run, fets_phantom, ("train.json", "evaluate.json"))
    summary = json.loads((safe_run / "eval" / "metrics_summary.json").read_text())
    assert summary["n_cases"] == TINY["num_target_test"]


def test_a_rerun_reuses_the_finished_candidates(safe_run: Path, fets_phantom: str) -> None:
    models = {n: (safe_run / "models" / "candidates" / n / "model.pt").stat().st_mtime_ns for n in CANDIDATES}
    _run("safe_training", safe_run, fets_phantom)
    assert {n: (safe_run / "models" / "candidates" / n / "model.pt").stat().st_mtime_ns for n in CANDIDATES} == models


def test_racing_runs_through_the_rungs(tmp_path: Path, fets_phantom: str) -> None:
    _run("safe_training", tmp_path, fets_phantom, **{"safe#racing": True, "max_epochs": 2, "safe#rungs": [0.5]})
    report = json.loads((tmp_path / "eval" / "transfer_report.json").read_text())
    finished, dropped = set(report["candidates"]), set(report["dropped_by_racing"])
    assert finished | dropped == set(CANDIDATES) and not finished & dropped
    assert all(report["candidates"][n]["epochs"] == 2 for n in finished)
    assert report["cost_in_runs"] == pytest.approx(len(finished) + len(dropped) / 2)


def test_a_model_the_bundle_did_not_write_is_never_replaced(tmp_path: Path, fets_phantom: str) -> None:
    """Beside a downloaded ``models/model.pt`` the candidates and the chosen model go to ``models/trained/``."""
    shipped = tmp_path / "models" / "model.pt"
    shipped.parent.mkdir(parents=True)
    shipped.write_bytes(b"weights shipped with a Model Zoo download")
    _run("safe_training", tmp_path, fets_phantom, **{"safe#candidates": {"plain": {"risk#enabled": False}}})
    assert shipped.read_bytes() == b"weights shipped with a Model Zoo download"
    trained = tmp_path / "models" / "trained"
    assert file_sha256(trained / "model.pt") == file_sha256(trained / "candidates" / "plain" / "model.pt")


def test_safe_training_replaces_the_training_run_s_model_only_when_told(tmp_path: Path, fets_phantom: str) -> None:
    _run("training", tmp_path, fets_phantom)
    before = file_sha256(tmp_path / "models" / "model.pt")
    plain = {"safe#candidates": {"plain": {"risk#enabled": False}}}
    with pytest.raises(Exception) as error:
        _run("safe_training", tmp_path, fets_phantom, **plain)
    assert "--overwrite true" in exception_messages(error.value)
    assert file_sha256(tmp_path / "models" / "model.pt") == before
    _run("safe_training", tmp_path, fets_phantom, **plain, overwrite=True)
    assert file_sha256(tmp_path / "models" / "model.pt") == file_sha256(tmp_path / "models" / "candidates" / "plain" / "model.pt")


def test_a_candidate_with_an_unknown_config_id_is_named_before_any_training(tmp_path: Path, fets_phantom: str) -> None:
    candidates = tmp_path / "candidates.json"
    candidates.write_text(json.dumps({"plain": {"risk#enabled": False}, "typo": {"risk#strenght": 2.0}}))
    with pytest.raises(Exception) as error:
        _run("safe_training", tmp_path / "bundle", fets_phantom, **{"safe#candidates_file": str(candidates)})
    message = exception_messages(error.value)
    assert "candidate 'typo'" in message and "risk#strenght" in message and "did you mean risk#strength" in message
    assert not (tmp_path / "bundle" / "models").exists(), "refused before the source stage"
