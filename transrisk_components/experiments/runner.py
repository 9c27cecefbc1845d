"""Running the grid's cells with the bundles' own run ids: one after the other, or side by side.

Every cell runs the bundles' run ids through
:class:`~transrisk_components.bundle.workflow.entry.TransferWorkflow` -- ``finetune`` on ``train.json`` (the source
stage, the risk maps when the method uses them, one fine-tuning run), then ``evaluating`` on ``train.json +
evaluate.json`` once on the target-validation cases and once on the target-test cases -- with config overrides that
select the scenario, the method and the seed (:func:`~transrisk_components.experiments.cells.cell_overrides`).
There is no second training loop here: a cell is the run a safe-transfer candidate with the same overrides is.

A cell whose ``result.json`` exists is done and skipped -- after checking that the fine-tuning fingerprint it
records (the bundle's fine-tuning stage fingerprint: its resolved config, split cases, input files, source model)
is the one the cell resolves to now; a cell made with other settings (e.g. before a bundle default changed) stops
the grid with the differences. A killed grid continues where it stopped; a cell killed mid-training resumes from its last
epoch checkpoint.

:func:`run_grid_in_parallel` runs independent cells side by side (a GPU machine's cores): first one cell per source
model, so that each source is trained once, then one worker per scenario and seed, so that a risk-map cache is only
ever written by one process.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from transrisk_components.bundle.io.records import StaleOutputError
from transrisk_components.bundle.workflow.entry import TransferWorkflow
from transrisk_components.bundle.workflow.fingerprint import differences
from transrisk_components.bundle.workflow.pipeline import TransferPipeline
from transrisk_components.bundle.workflow.request import BundleRequest
from transrisk_components.experiments.catalogue import SCENARIOS
from transrisk_components.experiments.cells import Cell, bundle_config, cell_overrides
from transrisk_components.experiments.profiles import Profile
from transrisk_components.utils.io import atomic_write_text

__all__ = [
    "export_risk_overlays", "finetune_fingerprint", "mean_over_regions", "parallel_schedule", "per_case_dice", "prepare_phantoms",
    "run_cell", "run_grid_in_parallel", "run_workflow",
]

logger = logging.getLogger(__name__)


def run_workflow(config_files: list[str], run_id: str, overrides: Mapping[str, Any]) -> None:
    """Initialise, run and finalise the bundle run id ``run_id`` of ``config_files`` (merged in order)."""
    workflow = TransferWorkflow(config_file=config_files, run_id=run_id, **overrides)
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def prepare_phantoms(profile: Profile, root: Path, dataset_dirs: Mapping[str, str | None]) -> dict[str, str | None]:
    """Generate the profile's phantoms under ``<root>/data/<bundle>`` for the bundles without a real dataset folder.

    A phantom already there is reused only when its generator options are the profile's (the options are kept in
    ``<root>/data/<bundle>/options.json`` with the dataset root's name); otherwise it is generated again. Real
    dataset folders pass through.

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


def finetune_fingerprint(cell: Cell, root: Path, profile: Profile, dataset_dirs: Mapping[str, str | None]) -> dict[str, Any]:
    """The bundle's fine-tuning stage fingerprint as the cell would resolve it now (its resolved config, its split
    cases' files, the source and risk stages it builds on); nothing is trained or written."""
    overrides = cell_overrides(cell, root, profile, dataset_dirs)
    request = BundleRequest.create(bundle_config(cell.scenario.bundle, "train"), overrides)
    return TransferPipeline(request, "finetune").plan(check_outputs=False).candidates[0].finetune.fingerprint


def _check_reuse(cell: Cell, row: Mapping[str, Any], current: Mapping[str, Any], result_path: Path) -> None:
    """Refuse a finished cell's ``result.json`` unless the fine-tuning fingerprint it records is the current one.

    Raises:
        StaleOutputError: the cell was trained with other settings or inputs (e.g. a bundle default changed since),
            naming the differences and the remedy.
    """
    found = differences(row.get("finetune_fingerprint"), current)
    if found:
        lines = "\n  ".join(found[:12] + ([f"... and {len(found) - 12} more"] if len(found) > 12 else []))
        raise StaleOutputError(
            f"grid cell {cell.scenario.name} | {cell.method.id} | seed {cell.seed}: {result_path} was made with "
            f"other fine-tuning settings or inputs than the current ones, so it is not reused. Differences "
            f"(recorded -> now):\n  {lines}\nDelete {result_path.parent} to run the cell again, or use another "
            f"work folder."
        )


def mean_over_regions(summary: Mapping[str, Any], metric: str) -> float:
    """Mean over regions of ``metric``'s mean in an evaluation's ``metrics_summary.json`` (NaN without values)."""
    values = [r[metric]["mean"] for r in summary["regions"].values() if r[metric]["mean"] is not None]
    return sum(values) / len(values) if values else math.nan


def per_case_dice(path: Path) -> dict[str, dict[str, float]]:
    """``{case_id: {region: dice}}`` from an evaluation's ``metrics_per_case.csv``."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    cases: dict[str, dict[str, float]] = {}
    for row in rows:
        cases.setdefault(row["case_id"], {})[row["region"]] = float(row["dice"])
    return cases


def _validation_curve(path: Path) -> dict[str, dict[str, float]]:
    """``{epoch: {region: mean validation Dice}}`` of a ``learning_curves.csv``, epochs as strings (for JSON)."""
    from transrisk_components.reporting.figures import validation_curve

    return {str(epoch): regions for epoch, regions in validation_curve(path).items()}


def evaluate_model_row(
    name: str, group: str, first: Cell, folder: Path, model: Path, root: Path, profile: Profile,
    dataset_dirs: Mapping[str, str | None],
) -> dict[str, Any]:
    """Evaluate ``model`` (a network no cell trained, e.g. one that combines cells' models, written in ``folder``)
    with the bundle's ``evaluating`` on the target-validation and target-test cases of ``first``'s split, as a cell's
    model is; return its row: a cell row's fields (no validation curve, no fingerprint) with ``method`` ``name``,
    ``group`` ``group`` and ``train_seconds`` 0."""
    overrides = {**cell_overrides(first, root, profile, dataset_dirs), "bundle_root": str(folder), "ckpt_dir": str(model.parent),
                 "output_dir": str(folder / "eval"), "log_dir": str(folder / "runs"), "model_file": str(model), "print_metrics": False}
    evaluate = [bundle_config(first.scenario.bundle, "train"), bundle_config(first.scenario.bundle, "evaluate")]
    val_dir = folder / "eval_val"
    run_workflow(evaluate, "evaluating", {**overrides, "output_dir": str(val_dir), "eval_split": "target_val"})
    run_workflow(evaluate, "evaluating", overrides)
    test_summary = json.loads((folder / "eval" / "metrics_summary.json").read_text())
    val_summary = json.loads((val_dir / "metrics_summary.json").read_text())
    return {
        "scenario": first.scenario.name,
        "kind": first.scenario.kind,
        "bundle": first.scenario.bundle,
        "method": name,
        "group": group,
        "seed": first.seed,
        "val_dice": mean_over_regions(val_summary, "dice"),
        **{f"val_dice_{region}": stats["dice"]["mean"] for region, stats in val_summary["regions"].items()},
        "test_dice": mean_over_regions(test_summary, "dice"),
        "test_hd95": mean_over_regions(test_summary, "hd95"),
        **{f"test_dice_{region}": stats["dice"]["mean"] for region, stats in test_summary["regions"].items()},
        "train_seconds": 0.0,
        "test_cases": per_case_dice(folder / "eval" / "metrics_per_case.csv"),
        "val_cases": per_case_dice(val_dir / "metrics_per_case.csv"),
    }


def run_cell(cell: Cell, root: Path, profile: Profile, dataset_dirs: Mapping[str, str | None]) -> dict[str, Any]:
    """Train, then evaluate on target-val and target-test; write and return the cell's ``result.json`` row.

    The row holds the cell's ids (``scenario``, ``method``, ``seed``), mean and per-region Dice (in [0, 1]) on the
    validation and test cases, the per-case Dice of both (``val_cases``, ``test_cases``), the validation curve
    and the fine-tuning fingerprint of its model (``models/finetune.fingerprint.json``); a finished cell is reused
    only while that fingerprint matches (see the module docstring).
    """
    folder = cell.folder(root)
    result_path = folder / "result.json"
    if result_path.is_file():
        row = json.loads(result_path.read_text())
        _check_reuse(cell, row, finetune_fingerprint(cell, root, profile, dataset_dirs), result_path)
        return row
    overrides = cell_overrides(cell, root, profile, dataset_dirs)
    train = bundle_config(cell.scenario.bundle, "train")
    evaluate = [train, bundle_config(cell.scenario.bundle, "evaluate")]
    start = time.perf_counter()
    run_workflow([train], "finetune", overrides)
    seconds = time.perf_counter() - start
    val_dir = folder / "eval_val"
    quiet = {"print_metrics": False}
    run_workflow(evaluate, "evaluating", {**overrides, **quiet, "output_dir": str(val_dir), "eval_split": "target_val"})
    run_workflow(evaluate, "evaluating", {**overrides, **quiet})
    test_summary = json.loads((folder / "eval" / "metrics_summary.json").read_text())
    val_summary = json.loads((val_dir / "metrics_summary.json").read_text())
    row: dict[str, Any] = {
        "scenario": cell.scenario.name,
        "kind": cell.scenario.kind,
        "bundle": cell.scenario.bundle,
        "method": cell.method.id,
        "group": cell.method.group,
        "seed": cell.seed,
        "val_dice": mean_over_regions(val_summary, "dice"),
        **{f"val_dice_{region}": stats["dice"]["mean"] for region, stats in val_summary["regions"].items()},
        "test_dice": mean_over_regions(test_summary, "dice"),
        "test_hd95": mean_over_regions(test_summary, "hd95"),
        **{f"test_dice_{region}": stats["dice"]["mean"] for region, stats in test_summary["regions"].items()},
        "train_seconds": round(seconds, 1),
        "test_cases": per_case_dice(folder / "eval" / "metrics_per_case.csv"),
        "val_cases": per_case_dice(val_dir / "metrics_per_case.csv"),
        "val_curve": _validation_curve(folder / "eval" / "learning_curves.csv"),
        "finetune_fingerprint": json.loads((folder / "models" / "finetune.fingerprint.json").read_text()),
    }
    atomic_write_text(result_path, json.dumps(row, indent=2) + "\n")
    return row


def parallel_schedule(cells: Sequence[Cell]) -> tuple[list[list[Cell]], list[list[Cell]]]:
    """Split a grid into two waves of cell groups that can run side by side.

    Wave 1 holds one cell per source model (scenario the source comes from, seed): the first cell of the source's
    own scenario (of a borrowing scenario if the grid lacks it) that fine-tunes from the source, so it trains the
    source once. Wave 2 holds the other cells, one group per scenario and seed, in grid order; a group runs in one
    process, so the risk-map cache of that scenario and seed has one writer. Every cell appears exactly once.
    """
    first: dict[tuple[str, int], Cell] = {}
    for cell in sorted(cells, key=lambda c: c.scenario.source_from is not None):  # the source's own scenario first
        if cell.method.overrides.get("target_init") == "random":
            continue
        first.setdefault((cell.scenario.source_from or cell.scenario.name, cell.seed), cell)
    wave1 = [[cell] for cell in cells if cell in first.values()]
    groups: dict[tuple[str, int], list[Cell]] = {}
    for cell in cells:
        if cell not in first.values():
            groups.setdefault((cell.scenario.name, cell.seed), []).append(cell)
    return wave1, list(groups.values())


def _run_cell_group(
    cells: Sequence[Cell], root: Path, profile: Profile, dataset_dirs: Mapping[str, str | None], threads: int
) -> list[dict[str, Any]]:
    """Worker process body: run ``cells`` one after the other with ``threads`` CPU threads."""
    import torch

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(threads)
    return [run_cell(cell, root, profile, dataset_dirs) for cell in cells]


def run_grid_in_parallel(
    cells: Sequence[Cell],
    root: Path,
    profile: Profile,
    dataset_dirs: Mapping[str, str | None],
    workers: int,
    on_row: Callable[[dict[str, Any]], None] = lambda row: None,
) -> list[dict[str, Any]]:
    """Run the grid's cells in ``workers`` processes (:func:`parallel_schedule`'s two waves); return their rows.

    Each worker gets ``cpu_count // workers`` threads and, on a CUDA machine, shares the GPU. ``on_row`` is called
    in this process for every finished cell (progress). A failing group stops the grid: the groups not started are
    cancelled, the running ones finish, and the error is raised naming the group.
    """
    threads = max(1, (os.cpu_count() or 1) // workers)
    rows: list[dict[str, Any]] = []
    context = multiprocessing.get_context("spawn")  # CUDA cannot be re-initialised in a forked child
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for wave in parallel_schedule(cells):
            pending: dict[Future, list[Cell]] = {
                pool.submit(_run_cell_group, group, root, profile, dataset_dirs, threads): group for group in wave
            }
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    group = pending.pop(future)
                    try:
                        finished = future.result()
                    except Exception as error:
                        for other in pending:
                            other.cancel()
                        first = group[0]
                        raise RuntimeError(
                            f"grid cells of {first.scenario.name}, seed {first.seed} "
                            f"({', '.join(c.method.id for c in group)}) failed: {error}"
                        ) from error
                    for row in finished:
                        on_row(row)
                    rows.extend(finished)
    return rows


def export_risk_overlays(cell: Cell, root: Path, profile: Profile, dataset_dirs: Mapping[str, str | None]) -> Path:
    """Run the bundle's ``export_risk`` for a finished cell: maps, PNG overlays and ``risk_summary.csv``.

    Returns the export folder ``<cell>/eval/risk_maps``; an export already there is kept.
    """
    out = cell.folder(root) / "eval" / "risk_maps"
    if not (out / "risk_summary.csv").is_file():
        configs = [bundle_config(cell.scenario.bundle, "train"), bundle_config(cell.scenario.bundle, "export_risk")]
        overrides = {**cell_overrides(cell, root, profile, dataset_dirs), "risk_export_dir": str(out)}
        run_workflow(configs, "export_risk", overrides)
    return out
