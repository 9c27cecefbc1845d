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

__all__ = ["Cell", "DEFAULT_RISK", "HEADLINE_METHODS", "METHODS", "Method", "PLAIN", "PROFILES", "Profile", "SCENARIOS", "GridScenario", "choose_default", "export_risk_overlays", "grid", "prepare_phantoms", "run_cell"]

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
        # The enhancing rim is invisible on T1 and bright on T1ce: a target class the source cannot see.
        GridScenario("fets_t1_to_t1ce", "fets", "cross-modality", {"source_modality": "t1", "target_modality": "t1ce"}),
        GridScenario("fets_t1_to_flair", "fets", "cross-modality", {"source_modality": "t1", "target_modality": "flair"}),
        GridScenario("fets_t1ce_to_t2", "fets", "cross-modality", {"source_modality": "t1ce", "target_modality": "t2"}),
        GridScenario("iseg_t1_to_t2", "iseg", "cross-modality", {"source_modality": "T1", "target_modality": "T2"}),
        # nnU-Net-style binary tasks of the authors' group: same modality, another tumour label.
        GridScenario(
            "fets_ed_to_et",
            "fets",
            "cross-task",
            {"source_modality": "t1ce", "target_modality": "t1ce", "source_task": "ED", "target_task": "ET"},
        ),
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
                {"source_modality": "t1", "target_modality": "t1ce", "num_target_train": n},
            )
            for n in (2, 4, 8)
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
    """Which part of the grid to run, with how much training, on which built-in phantom.

    ``phantoms`` gives, per bundle, the generator options of the phantom the grid runs on when no real dataset
    folder is given (see :func:`transrisk_components.data.phantom.make_phantom`); ``None`` uses the bundle's own
    default phantom.
    """

    scenarios: Sequence[str]
    methods: Sequence[str]
    seeds: Sequence[int]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    phantoms: Mapping[str, Mapping[str, Any]] | None = None


HEADLINE_METHODS = ("from scratch", PLAIN, DEFAULT_RISK)

#: The evidence testbed: enough phantom subjects for 16 test and 4 validation cases per scenario (24 per
#: institution for the cross-site scenario), and a bounded source set so that a source model costs the same in
#: every scenario.
TESTBED_PHANTOMS = {"fets": {"subjects": 72, "institutions": 3}, "iseg": {"subjects": 30, "labelled": 30}}
TESTBED_SPLITS = {"num_target_train": 4, "num_target_val": 4, "num_target_test": 16, "num_source": 16}

PROFILES: dict[str, Profile] = {
    "quick": Profile(  # short training, 32^3 patches, the headline methods, the three FeTS scenarios of the study
        scenarios=("fets_t1_to_t1ce", "fets_ed_to_et", "fets_fewshot_2"),
        methods=HEADLINE_METHODS,
        seeds=(0, 1, 2, 3, 4),
        overrides={**TESTBED_SPLITS, "source_epochs": 10, "max_epochs": 40, "val_interval": 10, "patch_size": [32, 32, 32]},
        phantoms=TESTBED_PHANTOMS,
    ),
    "full": Profile(  # every scenario and method at the bundles' own training length; meant for a GPU
        scenarios=tuple(SCENARIOS),
        methods=tuple(METHODS),
        seeds=(0, 1, 2, 3, 4),
        overrides={"num_target_val": 4, "num_target_test": 16},
        phantoms=TESTBED_PHANTOMS,
    ),
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


def prepare_phantoms(profile: Profile, root: Path, dataset_dirs: Mapping[str, str | None]) -> dict[str, str | None]:
    """Generate the profile's phantoms under ``<root>/data/<bundle>`` for the bundles without a real dataset folder.

    A phantom already there is reused only when its generator options are the profile's (the options are kept in
    ``<root>/data/<bundle>/options.json`` with the dataset root's name); otherwise it is generated again. Real dataset folders pass through.

    Returns:
        ``dataset_dirs`` with the phantom roots filled in (``None`` still means the bundle's default phantom).
    """
    from transrisk_components.data.phantom import make_phantom

    resolved = dict(dataset_dirs)
    bundles = {SCENARIOS[s].bundle for s in profile.scenarios}
    for bundle in sorted(bundles):
        if resolved.get(bundle) or not profile.phantoms or bundle not in profile.phantoms:
            continue
        options = dict(profile.phantoms[bundle])
        folder = root / "data" / bundle
        record_path = folder / "options.json"
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        if record.get("options") != options or not (folder / record.get("root", "?")).is_dir():
            logger.warning("generating the %s testbed phantom in %s: %s", bundle, folder, options)
            made = Path(make_phantom(bundle, folder, **options))
            record = {"options": options, "root": made.name}
            atomic_write_text(record_path, json.dumps(record, sort_keys=True) + "\n")
        resolved[bundle] = str(folder / record["root"])
    return resolved


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
