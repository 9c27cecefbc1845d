"""Run a profile (or the source-ranking study) into a work folder and write its report folder.

The command line is ``scripts/reproduce.py``. Training outputs go to the work folder (one grid per folder: its cells
share source models and risk-map caches, and a lock keeps a second grid out); the reports (``results.csv``,
``results_per_case.csv``, ``table.md``, ``figures/``, ``machine.md``) go to the report folder. A killed run continues
where it stopped: finished cells are kept.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

import transrisk_components

from transrisk_components.experiments.catalogue import DEFAULT_RISK, method_label
from transrisk_components.experiments.cells import REPO_ROOT, grid
from transrisk_components.experiments.profiles import Profile
from transrisk_components.experiments.ranking import RankingStudy, run_ranking_study
from transrisk_components.experiments.ranking_report import COLUMNS as RANKING_COLUMNS
from transrisk_components.experiments.ranking_report import summarise as summarise_ranking
from transrisk_components.experiments.reports import (
    copy_cell_figures,
    write_readme,
    write_result_files,
    write_table_and_figures,
)
from transrisk_components.experiments.runner import (
    export_risk_overlays,
    prepare_phantoms,
    run_cell,
    run_grid_in_parallel,
)
from transrisk_components.experiments.composites import composite_rows, safe_composite_rows
from transrisk_components.experiments.ensembles import ensemble_rows
from transrisk_components.experiments.hypotheses import REGISTERED_FILES
from transrisk_components.experiments.profiles import CONFIRM2_REGISTRATION
from transrisk_components.experiments.safe import SAFE_CANDIDATES, safe_transfer_rows
from transrisk_components.reporting.results import case_rows
from transrisk_components.utils.io import atomic_write_text
from transrisk_components.utils.lock import FolderLock

__all__ = ["reproduce_profile", "reproduce_ranking"]


def reproduce_profile(
    name: str,
    profile: Profile,
    work_dir: Path,
    report_dir: Path,
    dataset_dirs: Mapping[str, str | None],
    workers: int = 1,
    command: str = "",
) -> None:
    """Run (or continue) the grid of ``profile`` in ``work_dir`` and write its reports to ``report_dir``.

    After the cells: the default's risk overlays for the first seed, the safe-transfer rows where the profile has
    every candidate, the report files, the first seed's cell figures and ``machine.md``.

    Args:
        name: the profile's name, as ``machine.md`` records it.
        dataset_dirs: bundle name -> real dataset folder, or ``None`` for the profile's testbed phantom.
        workers: cells run side by side in this many processes (:func:`~.runner.run_grid_in_parallel`); 1 runs
            them one after the other in this process.
        command: the command line ``machine.md`` records.

    Raises:
        ValueError: ``workers`` is below 1.
        transrisk_components.utils.lock.FolderBusyError: another grid holds ``work_dir``.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    lock = FolderLock(work_dir, remedy="pass another --work_dir")
    lock.acquire()
    try:
        _run_grid(name, profile, work_dir, report_dir, dataset_dirs, workers, command)
    finally:
        lock.release()


def _run_grid(
    name: str, profile: Profile, work: Path, reports: Path, dataset_dirs: Mapping[str, str | None], workers: int,
    command: str,
) -> None:
    """The body of :func:`reproduce_profile`, under the work folder's lock."""
    cells = grid(profile)
    dataset_dirs = prepare_phantoms(profile, work, dataset_dirs)
    reused = sum((cell.folder(work) / "result.json").is_file() for cell in cells)
    start = time.perf_counter()
    with tqdm(total=len(cells), desc=f"reproduce {name}", unit="cell") as bar:

        def show(row: dict[str, Any]) -> None:
            bar.update()
            bar.write(f"{row['scenario']:18s} {method_label(row['method']):40s} seed {row['seed']}: "
                      f"val Dice {row['val_dice']:.3f}, test Dice {row['test_dice']:.3f}")

        if workers > 1:
            rows = run_grid_in_parallel(cells, work, profile, dataset_dirs, workers, on_row=show)
        else:
            rows = []
            for cell in cells:
                bar.set_postfix_str(f"{cell.scenario.name} | {cell.method.id} | seed {cell.seed}")
                rows.append(run_cell(cell, work, profile, dataset_dirs))
                show(rows[-1])
    first_seed = profile.seeds[0]
    for cell in cells:
        if cell.method.id == DEFAULT_RISK and cell.seed == first_seed:
            export_risk_overlays(cell, work, profile, dataset_dirs)
    if set(SAFE_CANDIDATES) <= set(profile.methods):
        if profile.ensembles:
            rows += ensemble_rows(rows, work, profile, dataset_dirs, SAFE_CANDIDATES)
        if profile.composites:
            rows += composite_rows(rows, work, profile, dataset_dirs, SAFE_CANDIDATES)
        settings = profile.overrides
        rows += safe_transfer_rows(rows, int(settings.get("max_epochs", 100)), int(settings.get("val_interval", 10)))
        if profile.composites:
            rows += safe_composite_rows(rows, SAFE_CANDIDATES)
    for row in rows:
        row.setdefault("epochs", int(profile.overrides.get("max_epochs", 100)))
    rows.sort(key=lambda r: (r["scenario"], r["group"], r["method"], r["seed"]))
    cases = case_rows(rows)
    write_result_files(rows, cases, reports)
    write_table_and_figures(rows, cases, reports)
    copy_cell_figures([cell for cell in cells if cell.seed == first_seed], work, reports)
    seconds = time.perf_counter() - start
    training = sum(float(r["train_seconds"]) for r in rows if r["group"] != "derived")
    atomic_write_text(reports / "machine.md", _machine_notes(command, name, seconds, len(cells), reused, training, workers))
    write_readme(reports)
    print(f"reports in {reports}")


def reproduce_ranking(
    study: RankingStudy, work_dir: Path, report_dir: Path, command: str = "", workers: int = 1
) -> float:
    """Run (or continue) the source-ranking study on the FeTS testbed phantom and write its report.

    Cells finished by an earlier invocation in the same ``work_dir`` are reused. Writes ``results.csv``,
    ``machine.md`` and ``source_rankings/<target>_seed<k>.csv`` (the ``rank_sources`` outputs), then the summary
    (:func:`~transrisk_components.experiments.ranking_report.summarise`), whose last printed line is
    ``ranking: kendall tau = <t> over <k> candidates``. ``workers``: the fine-tuning cells run in this many
    processes first (:func:`~.ranking.run_ranking_study`).

    Returns:
        The LEEP ranker's weighted Kendall tau, mean over targets.
    """
    dataset_dirs = prepare_phantoms(study.profile, work_dir, {"fets": None, "iseg": None})
    cells = [cell for seed in study.seeds for target in study.targets for cell in study.cells(seed, target).values()]
    reused = sum((cell.folder(work_dir) / "result.json").is_file() for cell in cells)
    start = time.perf_counter()
    rows = run_ranking_study(study, work_dir, dataset_dirs, progress=tqdm.write, workers=workers)
    results = report_dir / "results.csv"
    atomic_write_text(results, ",".join(RANKING_COLUMNS) + "\n" + "".join(
        ",".join(str(row[c]) for c in RANKING_COLUMNS) + "\n" for row in rows))
    atomic_write_text(report_dir / "machine.md", _machine_notes(command, "ranking", time.perf_counter() - start,
                                                                len(cells), reused, workers=workers))
    for target in study.targets:
        for seed in study.seeds:
            ranking = (work_dir / "ranking" / target / f"seed{seed}" / "source_ranking.csv").read_text()
            atomic_write_text(report_dir / "source_rankings" / f"{target}_seed{seed}.csv", ranking)
    return summarise_ranking(_shown(results), _shown(report_dir))


def _shown(path: Path) -> str:
    """``path`` relative to the repository root when it lies inside it (as the committed reports quote it)."""
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def _machine_notes(
    command: str, profile: str, seconds: float, cells: int, reused: int, training: float | None = None,
    workers: int = 1,
) -> str:
    """``machine.md``: the command, the profile, the cell counts and times, the machine and the versions."""
    import torch

    training_note = (
        f"; the cells' training run ids took {training / 60:.1f} minutes in all (source models included, "
        "evaluations not)" if training is not None else ""
    )
    if workers > 1:
        training_note += (f", summed over {workers} worker processes running side by side" if training is not None
                          else f"; cells in {workers} worker processes running side by side")
    return (
        f"# How these results were made\n\n"
        f"- command: `{command}` (from the repository root)\n"
        f"- profile: {profile}, {cells} cells ({reused} of them finished by an earlier invocation or another "
        f"profile in the same work folder); this invocation ran {seconds / 60:.1f} minutes{training_note}\n"
        f"- machine: {platform.platform()}, {os.cpu_count()} CPU cores, "
        f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}\n"
        f"- python {platform.python_version()}, torch {torch.__version__}\n"
        f"- code: {_code_version()}\n"
        + (f"- {_registration_note()}\n" if profile.startswith("confirm2_") else "")
    )


def _registration_note() -> str:
    """Whether the files of the registered rule (:data:`~.hypotheses.REGISTERED_FILES`) are those of its commit."""
    if CONFIRM2_REGISTRATION is None:
        return "pre-registration: no registration commit recorded; these runs do not count for the study"
    changed = subprocess.run(["git", "diff", "--name-only", CONFIRM2_REGISTRATION, "--", *REGISTERED_FILES], cwd=REPO_ROOT,
                             capture_output=True, text=True)
    if changed.returncode != 0:
        return f"pre-registration: the files could not be compared with {CONFIRM2_REGISTRATION} ({changed.stderr.strip()})"
    if changed.stdout.strip():
        return (f"pre-registration: CHANGED since {CONFIRM2_REGISTRATION}: {', '.join(changed.stdout.split())}; these "
                "runs do not count for the study")
    return f"pre-registration: the rule's files are those of {CONFIRM2_REGISTRATION} (registration commit)"


def _code_version() -> str:
    """The commit the code was checked out at (``git rev-parse HEAD``), with ``+ uncommitted changes`` when the work
    tree differs from it; ``transrisk <version>, not a git checkout`` outside one."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"transrisk {transrisk_components.__version__}, not a git checkout"
    return f"commit {head}{' + uncommitted changes' if dirty else ''} (transrisk {transrisk_components.__version__})"
