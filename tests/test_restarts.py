"""Restarts (``restart``): another fine-tuning seed on the same split, source model and risk maps; and the grid's
equal-compute controls (three restarts of one start, chosen on validation by the same rule)."""

from __future__ import annotations

import json
from pathlib import Path

from bundle_helpers import TINY, run_bundle

from transrisk_components.bundle.workflow.pipeline import TransferPipeline
from transrisk_components.bundle.workflow.request import BundleRequest
from transrisk_components.experiments.catalogue import CONTROLS, METHODS, PLAIN_RESTARTS, RISK_RESTARTS, restart_id
from transrisk_components.experiments.safe import safe_transfer_rows
from transrisk_components.utils.io import file_sha256

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "bundles" / "fets" / "configs" / "train.json"
RESTARTED = {"plain": {"risk#enabled": False}, "plain_r1": {"risk#enabled": False, "restart": 1},
             "risk_map": {}, "risk_map_r1": {"restart": 1}}


def _plan(root: Path, phantom: str, **overrides):
    settings = {**TINY, "safe#enabled": True, "bundle_root": str(root), "dataset_dir": phantom, **overrides}
    return TransferPipeline(BundleRequest((TRAIN,), settings), "training").plan(check_outputs=False)


def test_a_restart_changes_the_fine_tuning_alone(tmp_path: Path, fets_phantom: str) -> None:
    plan = _plan(tmp_path, fets_phantom, **{"safe#candidates": RESTARTED})
    digests = {c.name: c.finetune.digest for c in plan.candidates}
    assert digests["plain"] != digests["plain_r1"] and digests["risk_map"] != digests["risk_map_r1"]
    assert len(plan.risks) == 1, "restarts of the risk map read the same maps"
    restarted_run = _plan(tmp_path, fets_phantom, restart=1)  # a grid cell passes it for the whole run
    assert restarted_run.source.digest == plan.source.digest, "the source model is shared by the restarts"
    assert set(restarted_run.risks) == set(plan.risks)
    assert restarted_run.candidates[0].finetune.digest == digests["risk_map_r1"]


def test_restarts_train_other_models_from_one_source(tmp_path: Path, fets_phantom: str) -> None:
    candidates = {name: RESTARTED[name] for name in ("plain", "plain_r1")}
    run_bundle(REPO / "bundles" / "fets" / "configs", "training", tmp_path, fets_phantom,
               {**TINY, "safe#enabled": True, "safe#candidates": candidates})
    models = tmp_path / "models" / "candidates"
    assert file_sha256(models / "plain" / "model.pt") != file_sha256(models / "plain_r1" / "model.pt")
    report = json.loads((tmp_path / "eval" / "transfer_report.json").read_text())
    assert report["candidates"]["plain"]["regions"] != report["candidates"]["plain_r1"]["regions"]


def test_the_controls_are_three_restarts_of_plain_and_of_the_risk_map() -> None:
    assert CONTROLS[PLAIN_RESTARTS] == ("plain", "plain_r1", "plain_r2")
    assert CONTROLS[RISK_RESTARTS] == ("risk", "risk_r1", "risk_r2")
    assert METHODS[restart_id("plain", 2)].overrides == {"risk#enabled": False, "restart": 2}
    assert METHODS[restart_id("risk", 1)].overrides == {"restart": 1}


def _row(method: str, validation: float, test: float, seed: int = 0) -> dict:
    return {"scenario": "s", "seed": seed, "method": method, "test_dice": test,
            "val_cases": {f"case{i}": {"ET": validation} for i in range(5)}, "val_curve": {"10": {"ET": validation}}}


def test_a_control_keeps_the_restart_validation_prefers_at_the_cost_of_three_runs() -> None:
    rows = [_row("plain", 0.50, 0.40), _row("plain_r1", 0.70, 0.30), _row("plain_r2", 0.60, 0.90),
            _row("risk", 0.5, 0.5), _row("risk_r1", 0.5, 0.6)]  # risk_r2 missing: no risk_x3 row
    derived = {r["method"]: r for r in safe_transfer_rows(rows, 10, 10)}
    assert derived[PLAIN_RESTARTS]["chosen"] == "plain_r1" and derived[PLAIN_RESTARTS]["test_dice"] == 0.30
    assert derived[PLAIN_RESTARTS]["cost"] == 3.0
    assert RISK_RESTARTS not in derived
