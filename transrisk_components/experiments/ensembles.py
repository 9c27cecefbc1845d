"""Ensembles in the grid: per (scenario, seed), the ensembles safe transfer scores with ``safe#ensembles true``.

The members are the safe-transfer candidates' cells (:data:`~transrisk_components.experiments.safe.SAFE_CANDIDATES`);
which ensembles, and their members, come from the bundles' own rule
(:func:`~transrisk_components.bundle.workflow.ensembles.ensemble_candidates` on the cells' validation Dice), so the
grid builds what the product would. Each ensemble is written as one checkpoint
(:func:`~transrisk_components.bundle.engine.ensemble.write_ensemble_checkpoint`) into
``cells/<scenario>/<ensemble>/seed<k>/models/model.pt`` and evaluated with the bundle's ``evaluating`` on the
target-validation and target-test cases, as a cell is; its row is reused while its members' models are the ones it
was built from (their SHA-256 is recorded).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transrisk_components.bundle.engine.ensemble import write_ensemble_checkpoint
from transrisk_components.bundle.workflow.ensembles import ensemble_candidates
from transrisk_components.bundle.workflow.selection import choose_candidate
from transrisk_components.experiments.catalogue import METHODS, SCENARIOS
from transrisk_components.experiments.cells import Cell, bundle_config, cell_overrides
from transrisk_components.experiments.profiles import Profile
from transrisk_components.experiments.runner import mean_over_regions, per_case_dice, run_workflow
from transrisk_components.utils.io import atomic_write_text, file_sha256

__all__ = ["ENSEMBLE_GROUP", "ensemble_rows"]

#: The ``group`` of an ensemble's row: evaluated like a cell, trained by none.
ENSEMBLE_GROUP = "ensemble"


def ensemble_rows(
    rows: Sequence[Mapping[str, Any]], root: Path, profile: Profile, dataset_dirs: Mapping[str, str | None],
    candidates: Sequence[str],
) -> list[dict[str, Any]]:
    """The rows of the ensembles of every (scenario, seed) whose ``candidates`` all have a cell row, evaluated (or
    reused) in ``root``; a row is a cell row's fields (no validation curve, no fingerprint) plus ``members``
    (``"risk+plain"``) and ``group`` :data:`ENSEMBLE_GROUP`."""
    cells = {(r["scenario"], int(r["seed"]), r["method"]): r for r in rows}
    found = []
    for scenario, seed in dict.fromkeys((r["scenario"], int(r["seed"])) for r in rows):
        members = {m: cells.get((scenario, seed, m)) for m in candidates}
        if any(row is None for row in members.values()):
            continue
        chosen = ensemble_candidates(choose_candidate({m: row["val_cases"] for m, row in members.items()}))
        for name, names in chosen.items():
            cell_list = [Cell(SCENARIOS[scenario], METHODS[m], seed) for m in names]
            found.append(_evaluate_ensemble(name, cell_list, root, profile, dataset_dirs))
    return found


def _evaluate_ensemble(
    name: str, members: Sequence[Cell], root: Path, profile: Profile, dataset_dirs: Mapping[str, str | None],
) -> dict[str, Any]:
    """Build (or reuse) one ensemble of the cells ``members`` and evaluate it; return its row."""
    first = members[0]
    folder = root / "cells" / first.scenario.name / name / f"seed{first.seed}"
    models = [cell.folder(root) / "models" / "model.pt" for cell in members]
    digests = {cell.method.id: file_sha256(model) for cell, model in zip(members, models)}
    result_path = folder / "result.json"
    if result_path.is_file():
        row = json.loads(result_path.read_text())
        if row.get("member_sha256") == digests:
            return row
    model = folder / "models" / "model.pt"
    write_ensemble_checkpoint(models, model)
    overrides = {**cell_overrides(first, root, profile, dataset_dirs), "bundle_root": str(folder), "ckpt_dir": str(folder / "models"),
                 "output_dir": str(folder / "eval"), "log_dir": str(folder / "runs"), "model_file": str(model), "print_metrics": False}
    evaluate = [bundle_config(first.scenario.bundle, "train"), bundle_config(first.scenario.bundle, "evaluate")]
    val_dir = folder / "eval_val"
    run_workflow(evaluate, "evaluating", {**overrides, "output_dir": str(val_dir), "eval_split": "target_val"})
    run_workflow(evaluate, "evaluating", overrides)
    test_summary = json.loads((folder / "eval" / "metrics_summary.json").read_text())
    val_summary = json.loads((val_dir / "metrics_summary.json").read_text())
    row: dict[str, Any] = {
        "scenario": first.scenario.name,
        "kind": first.scenario.kind,
        "bundle": first.scenario.bundle,
        "method": name,
        "group": ENSEMBLE_GROUP,
        "seed": first.seed,
        "members": "+".join(cell.method.id for cell in members),
        "val_dice": mean_over_regions(val_summary, "dice"),
        **{f"val_dice_{region}": stats["dice"]["mean"] for region, stats in val_summary["regions"].items()},
        "test_dice": mean_over_regions(test_summary, "dice"),
        "test_hd95": mean_over_regions(test_summary, "hd95"),
        **{f"test_dice_{region}": stats["dice"]["mean"] for region, stats in test_summary["regions"].items()},
        "train_seconds": 0.0,
        "test_cases": per_case_dice(folder / "eval" / "metrics_per_case.csv"),
        "val_cases": per_case_dice(val_dir / "metrics_per_case.csv"),
        "member_sha256": digests,
    }
    atomic_write_text(result_path, json.dumps(row, indent=2) + "\n")
    return row
