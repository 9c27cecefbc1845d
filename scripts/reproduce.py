"""Reproduce the paper's comparison with the bundles' own run ids: scenarios x methods x seeds.

Usage (from the repository root)::

    python scripts/reproduce.py run --profile quick      # built-in phantoms, CPU, writes docs/results/quick/
    python scripts/reproduce.py run --profile study --workers 15   # every risk-map variant, chosen on validation
                                                         # (4 min on one H200; about 2 h 50 min on 2 CPU cores)
    python scripts/reproduce.py run --profile power --workers 15   # quick at 15 seeds (5 min on one H200)
    python scripts/reproduce.py run --profile full --fets_dir /data/MICCAI_FeTS2021_TrainingData \\
        --iseg_dir /data/iSeg-2019-Training                # everything; meant for a GPU and real data
    python scripts/reproduce.py table docs/results/quick/results.csv   # re-make table.md and the figures
    python scripts/reproduce.py ranking   # source-ranking study; last line: ranking: kendall tau = <t> over <k> candidates

Training outputs go to ``--work_dir`` (default ``outputs/reproduce/<profile>``, git-ignored); the reports
(``results.csv``, ``results_per_case.csv``, ``table.md``, ``figures/``, ``machine.md``) go to ``--report_dir`` (default
``docs/results/<profile>``). A killed run continues where it stopped: finished cells are kept.
"""

from __future__ import annotations

import logging
import os
import platform
import shlex
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import fire
import torch
from tqdm import tqdm

from experiments import (
    BETTER_OF_PLAIN_AND_SCRATCH,
    DEAD_CLASSES_REINIT,
    DEFAULT_RISK,
    FEW_SHOT_CURVE,
    FOREGROUND_MAP,
    METHODS,
    PLAIN,
    PROFILES,
    RANKING,
    Profile,
    REPO_ROOT,
    SAFE,
    SAFE_CANDIDATES,
    SAFE_RACED,
    SCRATCH,
    VOXEL_MEAN_NORM,
    choose_default,
    export_risk_overlays,
    grid,
    prepare_phantoms,
    run_cell,
    run_grid_in_parallel,
    run_ranking_study,
    safe_transfer_rows,
    selection_scores,
)
from ranking_study import COLUMNS as RANKING_COLUMNS
from ranking_study import summarise as summarise_ranking
from transrisk_components.reporting.results import (
    case_rows,
    load_case_results_csv,
    load_results_csv,
    markdown_table,
    plot_few_shot_curve,
    plot_method_comparison,
    plot_paired_differences,
    plot_runs_against_baseline,
    region_table,
    safe_transfer_table,
    write_case_results_csv,
    write_results_csv,
)
from transrisk_components.utils.io import atomic_write_text
from transrisk_components.utils.lock import FolderLock


#: Per-region paired comparisons of the reports: (method, baseline).
REGION_COMPARISONS = [
    (PLAIN, SCRATCH),
    (DEFAULT_RISK, PLAIN),
    (DEFAULT_RISK, SCRATCH),
    (DEFAULT_RISK, "ablation: random map"),
    (DEFAULT_RISK, FOREGROUND_MAP),
    (VOXEL_MEAN_NORM, PLAIN),
    (DEAD_CLASSES_REINIT, DEFAULT_RISK),
]


#: Every method a report shows, in report order: the grid's, then those safe transfer derives from them.
REPORTED_METHODS = [*METHODS, SAFE, SAFE_RACED, BETTER_OF_PLAIN_AND_SCRATCH]


def _write_validation_csv(rows: list[dict], report_dir: Path) -> None:
    """``validation_per_case.csv`` and ``validation_curves.csv``: what the selection rule reads, per grid cell, so
    that every choice in the report can be re-made from committed files."""
    cells = [r for r in rows if r.get("group") != "derived" and "val_cases" in r]
    if not cells:
        return
    key = ("scenario", "method", "seed")
    lines = [",".join((*key, "case_id", "region", "dice"))]
    lines += [",".join(map(str, (*(r[k] for k in key), case, region, dice)))
              for r in cells for case, regions in r["val_cases"].items() for region, dice in regions.items()]
    atomic_write_text(report_dir / "validation_per_case.csv", "\n".join(lines) + "\n")
    lines = [",".join((*key, "epoch", "region", "dice"))]
    lines += [",".join(map(str, (*(r[k] for k in key), epoch, region, dice)))
              for r in cells for epoch, regions in r["val_curve"].items() for region, dice in regions.items()]
    atomic_write_text(report_dir / "validation_curves.csv", "\n".join(lines) + "\n")


def _write_reports(rows: list[dict], cases: list[dict], report_dir: Path) -> None:
    write_results_csv(rows, report_dir / "results.csv")
    write_case_results_csv(cases, report_dir / "results_per_case.csv")
    _write_validation_csv(rows, report_dir)
    table = markdown_table(rows, cases, REPORTED_METHODS, baseline=PLAIN, highlight=DEFAULT_RISK)
    if any(r["method"] == SAFE for r in rows):
        table += (
            "\nSafe transfer: per scenario and seed, the candidate that the bundles' selection rule "
            "(`transrisk_components/bundle/selection.py`, validation cases only) picks, and the same rule after "
            "racing; compared with plain fine-tuning and with the per-seed better of plain fine-tuning and scratch "
            "by test Dice (an oracle), paired over (seed, test case) with both CIs (points). Chosen counts are in "
            "candidate order.\n\n"
            + safe_transfer_table(rows, cases, SAFE, SAFE_RACED, PLAIN, BETTER_OF_PLAIN_AND_SCRATCH, SAFE_CANDIDATES)
            + "\nPer region:\n\n"
            + region_table(cases, [(SAFE, PLAIN), (SAFE, BETTER_OF_PLAIN_AND_SCRATCH), (SAFE_RACED, SAFE)])
        )
    table += (
        "\nPer region (negative transfer shows as plain fine-tuning - from scratch below 0; a comparison appears "
        "where both methods ran):\n\n"
        + region_table(cases, REGION_COMPARISONS)
    )
    scores = selection_scores(rows)
    if len(scores) > 1:
        table += (
            "\nSelection rule (`choose_default`, validation Dice only): mean over scenarios of the mean validation "
            "Dice over seeds (%), ties within 0.5 points go to the earlier candidate:\n\n"
            + "".join(f"- {m}: {100 * v:.1f}\n" for m, v in sorted(scores.items(), key=lambda item: -item[1]))
            + f"\nChosen: **{choose_default(rows)}**.\n"
        )
    atomic_write_text(report_dir / "table.md", table)
    figures = report_dir / "figures"
    plot_method_comparison(cases, REPORTED_METHODS, figures / "dice_by_method.png")
    plot_paired_differences(cases, REPORTED_METHODS, PLAIN, figures / "paired_differences.png")
    if any(r["method"] == SAFE for r in rows):
        plot_paired_differences(cases, [SAFE, SAFE_RACED, *SAFE_CANDIDATES], BETTER_OF_PLAIN_AND_SCRATCH,
                                figures / "safe_vs_better_of_plain_and_scratch.png")
    if any(r["method"] == DEFAULT_RISK for r in rows) and any(r["method"] == PLAIN for r in rows):
        plot_runs_against_baseline(rows, DEFAULT_RISK, PLAIN, figures / "runs_default_vs_plain.png")
    if sum(any(c["scenario"] == s for c in cases) for s in FEW_SHOT_CURVE.values()) >= 2:
        plot_few_shot_curve(cases, FEW_SHOT_CURVE, REPORTED_METHODS, figures / "few_shot_curve.png")


def _copy_cell_figures(cells: list, work_dir: Path, report_dir: Path) -> None:
    """Copy the risk overlays and learning curves of ``cells`` (one seed's) into the report."""
    figures = report_dir / "figures"
    for cell in cells:
        for png in sorted(cell.folder(work_dir).glob("eval/**/*.png")):
            target = figures / cell.scenario.name / f"{cell.folder(work_dir).parent.name}_{png.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, target)


def _machine_notes(
    profile: str, seconds: float, cells: int, reused: int, training: float | None = None, workers: int = 1
) -> str:
    command = "python scripts/reproduce.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    training_note = (
        f"; the cells' training run ids took {training / 60:.1f} minutes in all (source models included, "
        "evaluations not)" if training is not None else ""
    )
    if workers > 1:
        training_note += f", summed over {workers} worker processes running side by side"
    return (
        f"# How these results were made\n\n"
        f"- command: `{command}` (from the repository root)\n"
        f"- profile: {profile}, {cells} cells ({reused} of them finished by an earlier invocation or another "
        f"profile in the same work folder); this invocation ran {seconds / 60:.1f} minutes{training_note}\n"
        f"- machine: {platform.platform()}, {os.cpu_count()} CPU cores, "
        f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}\n"
        f"- python {platform.python_version()}, torch {torch.__version__}\n"
    )


def run(
    profile: str = "quick",
    work_dir: str | None = None,
    report_dir: str | None = None,
    fets_dir: str | None = None,
    iseg_dir: str | None = None,
    workers: int = 1,
    scenarios: str | tuple[str, ...] | None = None,
) -> None:
    """Run (or continue) the grid of ``profile`` and write its reports.

    Args:
        profile: ``quick`` (phantoms, CPU, a subset), ``study`` (the risk-map variants on three FeTS phantom
            scenarios; the selection rule is :func:`experiments.choose_default`), ``power`` (quick at 15 seeds),
            ``full`` (every scenario and method) or ``tiny`` (tests); see ``PROFILES`` in ``experiments.py`` for
            the rest.
        work_dir: training outputs; default ``outputs/reproduce/<profile>``.
        report_dir: reports; default ``docs/results/<profile>``.
        fets_dir: a real FeTS2021 root (``MICCAI_FeTS2021_TrainingData``); default: the profile's testbed phantom.
        iseg_dir: a real iSeg-2019 root (``iSeg-2019-Training``); default: the profile's testbed phantom.
        workers: cells run side by side in this many processes (``run_grid_in_parallel``; for a machine with many
            cores and a GPU); 1 runs them one after the other in this process.
        scenarios: only these of the profile's scenarios (comma-separated), e.g. to finish a long profile one
            scenario at a time; the reports then cover those scenarios.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    logging.basicConfig(level=logging.WARNING)
    work = Path(work_dir or REPO_ROOT / "outputs" / "reproduce" / profile).resolve()
    reports = Path(report_dir or REPO_ROOT / "docs" / "results" / profile).resolve()
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    chosen = PROFILES[profile]
    if scenarios is not None:
        names = tuple(scenarios.split(",")) if isinstance(scenarios, str) else tuple(scenarios)
        unknown = [n for n in names if n not in chosen.scenarios]
        if unknown:
            raise ValueError(f"scenarios {unknown} are not in profile {profile!r}: {list(chosen.scenarios)}")
        chosen = replace(chosen, scenarios=names)
    # one grid per work folder: its cells share source models and risk-map caches
    lock = FolderLock(work, remedy="pass another --work_dir")
    lock.acquire()
    try:
        _run_grid(profile, chosen, work, reports, {"fets": fets_dir, "iseg": iseg_dir}, workers)
    finally:
        lock.release()


def _run_grid(
    profile: str, grid_profile: Profile, work: Path, reports: Path, dataset_dirs: dict[str, str | None], workers: int
) -> None:
    """The body of :func:`run`, under the work folder's lock: cells, risk overlays, reports, ``machine.md``."""
    cells = grid(grid_profile)
    dataset_dirs = prepare_phantoms(grid_profile, work, dataset_dirs)
    reused = sum((cell.folder(work) / "result.json").is_file() for cell in cells)
    start = time.perf_counter()
    with tqdm(total=len(cells), desc=f"reproduce {profile}", unit="cell") as bar:

        def show(row: dict) -> None:
            bar.update()
            bar.write(f"{row['scenario']:18s} {row['method']:40s} seed {row['seed']}: "
                      f"val Dice {row['val_dice']:.3f}, test Dice {row['test_dice']:.3f}")

        if workers > 1:
            rows = run_grid_in_parallel(cells, work, grid_profile, dataset_dirs, workers, on_row=show)
        else:
            rows = []
            for cell in cells:
                bar.set_postfix_str(f"{cell.scenario.name} | {cell.method.name} | seed {cell.seed}")
                rows.append(run_cell(cell, work, grid_profile, dataset_dirs))
                show(rows[-1])
    first_seed = grid_profile.seeds[0]
    for cell in cells:
        if cell.method.name == DEFAULT_RISK and cell.seed == first_seed:
            export_risk_overlays(cell, work, grid_profile, dataset_dirs)
    if set(SAFE_CANDIDATES) <= set(grid_profile.methods):
        settings = grid_profile.overrides
        rows += safe_transfer_rows(rows, int(settings.get("max_epochs", 100)), int(settings.get("val_interval", 10)))
    rows.sort(key=lambda r: (r["scenario"], r["group"], r["method"], r["seed"]))
    _write_reports(rows, case_rows(rows), reports)
    _copy_cell_figures([cell for cell in cells if cell.seed == first_seed], work, reports)
    seconds = time.perf_counter() - start
    training = sum(float(r["train_seconds"]) for r in rows if r["group"] != "derived")
    atomic_write_text(reports / "machine.md", _machine_notes(profile, seconds, len(cells), reused, training, workers))
    print(f"reports in {reports}")


def table(results_csv: str, report_dir: str | None = None) -> None:
    """Re-make ``table.md`` and the figures from a ``results.csv`` and the ``results_per_case.csv`` beside it."""
    rows = load_results_csv(Path(results_csv))
    cases = load_case_results_csv(Path(results_csv).with_name("results_per_case.csv"))
    _write_reports(rows, cases, Path(report_dir) if report_dir else Path(results_csv).parent)


def _shown(path: Path) -> str:
    """``path`` relative to the repository root when it lies inside it (as the committed reports quote it)."""
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def ranking(work_dir: str | None = None, report_dir: str | None = None) -> None:
    """Run (or continue) the source-ranking study on the FeTS testbed phantom and write its report.

    Uses the ``quick`` profile's training settings; with the same ``--work_dir`` as a ``quick`` run, its finished
    cells (e.g. T1 -> T1ce plain fine-tuning) are reused. The last line printed is
    ``ranking: kendall tau = <t> over <k> candidates``.

    Args:
        work_dir: training outputs; default ``outputs/reproduce/quick``.
        report_dir: reports; default ``docs/results/ranking``.
    """
    logging.basicConfig(level=logging.WARNING)
    work = Path(work_dir or REPO_ROOT / "outputs" / "reproduce" / RANKING.profile).resolve()
    reports = Path(report_dir or REPO_ROOT / "docs" / "results" / "ranking").resolve()
    profile = PROFILES[RANKING.profile]
    dataset_dirs = prepare_phantoms(profile, work, {"fets": None, "iseg": None})
    cells = len(RANKING.targets) * len(RANKING.candidates) * len(RANKING.seeds)
    reused = sum((work / "cells" / RANKING.scenario(s, t).name / "plain_fine_tuning" / f"seed{k}" / "result.json").is_file()
                 for s in RANKING.candidates for t in RANKING.targets for k in RANKING.seeds)
    start = time.perf_counter()
    rows = run_ranking_study(RANKING, work, dataset_dirs, progress=tqdm.write)
    results = reports / "results.csv"
    atomic_write_text(results, ",".join(RANKING_COLUMNS) + "\n" + "".join(
        ",".join(str(row[c]) for c in RANKING_COLUMNS) + "\n" for row in rows))
    atomic_write_text(reports / "machine.md", _machine_notes("ranking (quick settings)", time.perf_counter() - start,
                                                             cells, reused))
    summarise_ranking(_shown(results), _shown(reports))


if __name__ == "__main__":
    fire.Fire({"run": run, "table": table, "ranking": ranking})
