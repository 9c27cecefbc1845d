"""The paper's comparison as a grid of bundle runs: scenarios x methods x seeds.

Every cell runs the bundles' own run ids through :class:`monai.bundle.ConfigWorkflow` -- ``training`` on
``train.json``, then ``evaluating`` on ``train.json + evaluate.json`` once on the target-validation cases and once on
the target-test cases -- with config overrides that select the scenario, the method and the seed. There is no
second training loop here.

Layout of an experiment folder::

    sources/<scenario>/seed<k>/source.pt         source model, shared by every method of that scenario and seed
    risk_maps/<scenario>/seed<k>/<key>/          risk-map cache (the key covers the options)
    cells/<scenario>/<method>/seed<k>/           the cell's checkpoints, splits, metrics and result.json
    results.csv, table.md, figures/              written by :mod:`transrisk_components.reporting.results`

A cell whose ``result.json`` exists is done and skipped, so a killed grid continues where it stopped; a cell
killed mid-training resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transrisk_components.utils.io import atomic_write_text

__all__ = ["Cell", "DEFAULT_RISK", "METHODS", "Method", "PLAIN", "PROFILES", "Profile", "SCENARIOS", "GridScenario", "choose_default", "export_risk_overlays", "grid", "run_cell"]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
PLAIN = "plain fine-tuning"
DEFAULT_RISK = "risk-weighted (default)"


@dataclass(frozen=True)
class GridScenario:
    """A transfer setting: which bundle, and the config overrides that pick source and target."""

    name: str
    bundle: str
    kind: str
    overrides: Mapping[str, Any]


@dataclass(frozen=True)
class Method:
    """A fine-tuning method: config overrides on top of the bundle's ``train.json``."""

    name: str
    overrides: Mapping[str, Any]
    group: str = "main"  # main, variant (other risk-map settings), sweep, ablation, alternative


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    scenario: GridScenario
    method: Method
    seed: int

    def folder(self, root: Path) -> Path:
        """``<root>/cells/<scenario>/<method slug>/seed<k>``."""
        return root / "cells" / self.scenario.name / _slug(self.method.name) / f"seed{self.seed}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")


def _loss_override(loss: Mapping[str, Any]) -> dict[str, Any]:
    """Override of the ``loss`` id with a plain (map-free) loss wrapped as the trainer expects."""
    return {"risk#enabled": False, "loss": {"_target_": "transrisk_components.bundle.engine.TransferLoss", "loss": dict(loss)}}


_DICE_CE = {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True}

SCENARIOS: dict[str, GridScenario] = {
    s.name: s
    for s in [
        GridScenario("fets_t1_to_flair", "fets", "cross-modality", {"source_modality": "t1", "target_modality": "flair"}),
        GridScenario("fets_t1ce_to_t2", "fets", "cross-modality", {"source_modality": "t1ce", "target_modality": "t2"}),
        GridScenario("iseg_t1_to_t2", "iseg", "cross-modality", {"source_modality": "T1", "target_modality": "T2"}),
        GridScenario(
            "fets_wt_to_tc",
            "fets",
            "cross-task",
            {"source_modality": "flair", "target_modality": "flair", "source_task": "WT", "target_task": "TC"},
        ),
        GridScenario(
            "iseg_wm_to_gm",
            "iseg",
            "cross-task",
            {"source_modality": "T2", "target_modality": "T2", "source_task": "WM", "target_task": "GM"},
        ),
        *[
            GridScenario(
                f"fets_fewshot_{n}",
                "fets",
                "few-shot",
                {"source_modality": "t1", "target_modality": "flair", "num_target_train": n},
            )
            for n in (1, 2, 4)
        ],
        GridScenario(
            "fets_cross_site",
            "fets",
            "cross-site",
            {
                "source_modality": "flair",
                "target_modality": "flair",
                "partition_csv": "partitioning_1.csv",
                "source_partitions": ["01", "02"],
                "target_partitions": ["03"],
            },
        ),
    ]
}

METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("from scratch", {"target_init": "random", "risk#enabled": False}),
        Method(PLAIN, {"risk#enabled": False}),
        Method(DEFAULT_RISK, {}),
        Method(
            "ablation: uniform map, foreground norm.",
            {"risk#scheme": "uniform", "risk#loss_normalization": "foreground"},
            "ablation",
        ),
        Method("ablation: random map", {"risk#shuffle": True}, "ablation"),
        Method("risk map, foreground norm. (paper)", {"risk#loss_normalization": "foreground"}, "variant"),
        *[Method(f"sweep: linear s={s}", {"risk#scheme": "linear", "risk#strength": s}, "sweep") for s in (0.5, 2.0, 4.0)],
        *[Method(f"sweep: exponential s={s}", {"risk#scheme": "exponential", "risk#strength": s}, "sweep") for s in (1.0, 2.0)],
        Method(
            "L2-SP",
            _loss_override(
                {
                    "_target_": "transrisk_components.method.baselines.L2SPLoss",
                    "loss": _DICE_CE,
                    "network": "@network",
                    "source_ckpt": "@source_ckpt",
                }
            ),
            "alternative",
        ),
        Method(
            "focal loss",
            _loss_override({"_target_": "DiceFocalLoss", "to_onehot_y": True, "softmax": True, "gamma": 2.0}),
            "alternative",
        ),
        Method("top-k CE", _loss_override({"_target_": "transrisk_components.method.baselines.TopKDiceCELoss"}), "alternative"),
    ]
}


@dataclass(frozen=True)
class Profile:
    """Which part of the grid to run and with how much training."""

    scenarios: Sequence[str]
    methods: Sequence[str]
    seeds: Sequence[int]
    overrides: Mapping[str, Any] = field(default_factory=dict)


PROFILES: dict[str, Profile] = {
    "quick": Profile(  # about 50 minutes on 2 CPU cores: shorter training than the bundles' defaults
        scenarios=("fets_t1_to_flair", "fets_wt_to_tc", "iseg_t1_to_t2"),
        methods=(
            "from scratch",
            PLAIN,
            DEFAULT_RISK,
            "ablation: uniform map, foreground norm.",
            "risk map, foreground norm. (paper)",
        ),
        seeds=(0, 1, 2),
        overrides={"source_epochs": 20, "max_epochs": 40, "val_interval": 10},
    ),
    "full": Profile(scenarios=tuple(SCENARIOS), methods=tuple(METHODS), seeds=(0, 1, 2)),
    "tiny": Profile(  # the test suite's grid (on a 32^3 phantom given as --fets_dir): 1 epoch, a tiny network
        scenarios=("fets_t1_to_flair",),
        methods=(PLAIN, DEFAULT_RISK),
        seeds=(0, 1),
        overrides={"source_epochs": 1, "max_epochs": 1, "val_interval": 1, "network_def#init_filters": 4,
                   "network_def#blocks_down": [1, 2], "network_def#blocks_up": [1], "patch_size": [16, 16, 16],
                   "batch_size": 1, "num_source": 3, "num_target_train": 2, "num_target_val": 1, "num_target_test": 2},
    ),
}


def grid(profile: Profile) -> list[Cell]:
    """The cells of ``profile`` in run order (scenario, seed, method), so a source model is trained once."""
    unknown = [s for s in profile.scenarios if s not in SCENARIOS] + [m for m in profile.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown scenarios/methods {unknown}; known: {sorted(SCENARIOS)} / {sorted(METHODS)}")
    return [
        Cell(SCENARIOS[s], METHODS[m], seed) for s in profile.scenarios for seed in profile.seeds for m in profile.methods
    ]


def bundle_config(bundle: str, name: str) -> str:
    """Path of ``bundles/<bundle>/configs/<name>.json`` in this repository."""
    return str(REPO_ROOT / "bundles" / bundle / "configs" / f"{name}.json")


def cell_overrides(cell: Cell, root: Path, profile: Profile, dataset_dirs: Mapping[str, str | None]) -> dict[str, Any]:
    """Every config override of one cell: outputs under ``root``, scenario, method, seed, profile settings."""
    folder = cell.folder(root)
    shared = f"{cell.scenario.name}/seed{cell.seed}"
    overrides: dict[str, Any] = {
        "seed": cell.seed,
        "ckpt_dir": str(folder / "models"),
        "output_dir": str(folder / "eval"),
        "log_dir": str(folder / "runs"),
        "source_ckpt": str(root / "sources" / shared / "source.pt"),
        "risk_dir": str(root / "risk_maps" / shared),
        "progress": False,
        **profile.overrides,
        **cell.scenario.overrides,
        **cell.method.overrides,
    }
    if dataset_dirs.get(cell.scenario.bundle):
        overrides["dataset_dir"] = dataset_dirs[cell.scenario.bundle]
    return overrides


def _run_workflow(config_files: list[str], run_id: str, overrides: Mapping[str, Any]) -> None:
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(config_file=config_files, run_id=run_id, workflow_type=None, **overrides)
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def _mean_over_regions(summary: Mapping[str, Any], metric: str) -> float:
    values = [r[metric]["mean"] for r in summary["regions"].values() if r[metric]["mean"] is not None]
    return sum(values) / len(values) if values else math.nan


def _per_case_dice(path: Path) -> dict[str, dict[str, float]]:
    """``{case_id: {region: dice}}`` from an evaluation's ``metrics_per_case.csv``."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    cases: dict[str, dict[str, float]] = {}
    for row in rows:
        cases.setdefault(row["case_id"], {})[row["region"]] = float(row["dice"])
    return cases


def run_cell(cell: Cell, root: Path, profile: Profile, dataset_dirs: Mapping[str, str | None]) -> dict[str, Any]:
    """Train, then evaluate on target-val and target-test; write and return the cell's ``result.json`` row."""
    folder = cell.folder(root)
    result_path = folder / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    overrides = cell_overrides(cell, root, profile, dataset_dirs)
    train = bundle_config(cell.scenario.bundle, "train")
    evaluate = [train, bundle_config(cell.scenario.bundle, "evaluate")]
    start = time.perf_counter()
    _run_workflow([train], "training", overrides)
    seconds = time.perf_counter() - start
    val_dir = folder / "eval_val"
    _run_workflow(evaluate, "evaluating", {**overrides, "output_dir": str(val_dir), "validate#dataset#data": "$@scenario.split('target_val')"})
    _run_workflow(evaluate, "evaluating", overrides)
    test_summary = json.loads((folder / "eval" / "metrics_summary.json").read_text())
    val_summary = json.loads((val_dir / "metrics_summary.json").read_text())
    row: dict[str, Any] = {
        "scenario": cell.scenario.name,
        "kind": cell.scenario.kind,
        "bundle": cell.scenario.bundle,
        "method": cell.method.name,
        "group": cell.method.group,
        "seed": cell.seed,
        "val_dice": _mean_over_regions(val_summary, "dice"),
        "test_dice": _mean_over_regions(test_summary, "dice"),
        "test_hd95": _mean_over_regions(test_summary, "hd95"),
        **{f"test_dice_{region}": stats["dice"]["mean"] for region, stats in test_summary["regions"].items()},
        "train_seconds": round(seconds, 1),
        "test_cases": _per_case_dice(folder / "eval" / "metrics_per_case.csv"),
    }
    atomic_write_text(result_path, json.dumps(row, indent=2) + "\n")
    return row


def export_risk_overlays(cell: Cell, root: Path, profile: Profile, dataset_dirs: Mapping[str, str | None]) -> Path:
    """Run the bundle's ``export_risk`` for a finished cell: maps, PNG overlays and ``risk_summary.csv``.

    Returns the export folder ``<cell>/eval/risk_maps``; an export already there is kept.
    """
    out = cell.folder(root) / "eval" / "risk_maps"
    if not (out / "risk_summary.csv").is_file():
        configs = [bundle_config(cell.scenario.bundle, "train"), bundle_config(cell.scenario.bundle, "export_risk")]
        overrides = {**cell_overrides(cell, root, profile, dataset_dirs), "risk_export_dir": str(out)}
        _run_workflow(configs, "export_risk", overrides)
    return out


def choose_default(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The risk-map variant (default, variants, sweep) with the best mean validation Dice over all scenarios."""
    candidates = [m for m in METHODS if m == DEFAULT_RISK or METHODS[m].group in ("variant", "sweep")]
    scores = {}
    for method in candidates:
        values = [float(r["val_dice"]) for r in rows if r["method"] == method and not math.isnan(float(r["val_dice"]))]
        if values:
            scores[method] = sum(values) / len(values)
    return max(scores, key=scores.get) if scores else None
