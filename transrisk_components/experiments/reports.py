"""The grid's report folder: result CSVs keyed by method id, and ``table.md`` and figures that show labels.

Files (under the report folder)::

    results.csv, results_per_case.csv      one row per cell / per (cell, test case, region); ``method`` holds ids
    validation_per_case.csv,
    validation_curves.csv                  what the selection rules read, so every choice can be re-made
    table.md, figures/                     written by :mod:`transrisk_components.reporting.results`, with labels
    README.md                              :func:`write_readme`: how the report was made, its figures and tables

:func:`load_results` reads a report's CSVs, including those written before methods had ids (labels in ``method``).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transrisk_components.experiments.catalogue import (
    BEST_CANDIDATE,
    BETTER_OF_PLAIN_AND_SCRATCH,
    DEAD_CLASSES_REINIT,
    DEFAULT_RISK,
    DERIVED_METHODS,
    FOREGROUND_MAP,
    METHODS,
    PLAIN,
    PLAIN_RESTARTS,
    RANDOM_MAP,
    RISK_RESTARTS,
    SAFE,
    SAFE_COMPOSITE,
    SAFE_ENSEMBLE,
    SAFE_RACED,
    SCRATCH,
    VOXEL_MEAN_NORM,
    method_id,
    method_label,
)
from transrisk_components.experiments.cells import Cell
from transrisk_components.experiments.hypotheses import (
    H1_MARGIN,
    HYPOTHESIS_METHODS,
    Hypothesis,
    hypotheses_markdown,
    judge_hypotheses,
)
from transrisk_components.experiments.profiles import FEW_SHOT_CURVE
from transrisk_components.experiments.safe import SAFE_CANDIDATES
from transrisk_components.experiments.study import choose_default, selection_scores
from transrisk_components.reporting.figures import CriterionEntry, plot_criteria_forest
from transrisk_components.reporting.results import (
    load_case_results_csv,
    PairedStatistics,
    load_results_csv,
    markdown_table,
    paired_case_statistics,
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

__all__ = [
    "REGION_COMPARISONS", "REPORTED_METHODS", "beside_hypotheses_markdown", "combine_reports", "copy_cell_figures",
    "hypothesis_comparisons", "load_results", "plot_hypotheses", "write_readme", "write_result_files",
    "write_table_and_figures",
]

#: Per-region paired comparisons of the reports: (method, baseline), ids.
REGION_COMPARISONS = [
    (PLAIN, SCRATCH),
    (DEFAULT_RISK, PLAIN),
    (DEFAULT_RISK, SCRATCH),
    (DEFAULT_RISK, RANDOM_MAP),
    (DEFAULT_RISK, FOREGROUND_MAP),
    (VOXEL_MEAN_NORM, PLAIN),
    (DEAD_CLASSES_REINIT, DEFAULT_RISK),
]

#: Every method a report shows, in report order: the grid's, then those safe transfer derives from them.
REPORTED_METHODS = [*METHODS, *DERIVED_METHODS]


def load_results(results_csv: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of ``results_csv`` and of the ``results_per_case.csv`` beside it, with method ids.

    The ``method`` and ``chosen`` columns may hold ids or display labels (reports written before methods had ids);
    both are read as ids (:func:`~transrisk_components.experiments.catalogue.method_id`).

    Returns:
        ``(rows, cases)``: one dict per cell row and one per (cell, test case, region).
    """
    rows = [_with_ids(r) for r in load_results_csv(Path(results_csv))]
    cases = [_with_ids(c) for c in load_case_results_csv(Path(results_csv).with_name("results_per_case.csv"))]
    return rows, cases


def _with_ids(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with its ``method`` (and ``chosen``, when set) as method ids."""
    out = {**row, "method": method_id(row["method"])}
    if row.get("chosen"):
        out["chosen"] = method_id(row["chosen"])
    return out


def _with_labels(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with its ``method`` (and ``chosen``, when set) as display labels."""
    out = {**row, "method": method_label(row["method"])}
    if row.get("chosen"):
        out["chosen"] = method_label(row["chosen"])
    return out


def write_result_files(rows: Sequence[Mapping[str, Any]], cases: Sequence[Mapping[str, Any]], report_dir: Path) -> None:
    """``results.csv``, ``results_per_case.csv`` and (for cell rows from a run) the validation CSVs.

    Args:
        rows: cell rows (:func:`~transrisk_components.experiments.runner.run_cell`) and derived rows, method ids.
        cases: per-case test Dice (:func:`~transrisk_components.reporting.results.case_rows`).
    """
    write_results_csv(rows, report_dir / "results.csv")
    write_case_results_csv(cases, report_dir / "results_per_case.csv")
    _write_validation_csv(rows, report_dir)


def _write_validation_csv(rows: Sequence[Mapping[str, Any]], report_dir: Path) -> None:
    """``validation_per_case.csv`` and ``validation_curves.csv``: what the selection rule reads, per grid cell, so
    that every choice in the report can be re-made from committed files (an ensemble's row has validation Dice, no
    curve)."""
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
              for r in cells if "val_curve" in r for epoch, regions in r["val_curve"].items() for region, dice in regions.items()]
    atomic_write_text(report_dir / "validation_curves.csv", "\n".join(lines) + "\n")


def write_table_and_figures(rows: Sequence[Mapping[str, Any]], cases: Sequence[Mapping[str, Any]], report_dir: Path) -> None:
    """``table.md`` and ``figures/*.png`` of a report, methods shown by their labels.

    Args:
        rows: cell and derived rows, method ids (as :func:`load_results` gives them).
        cases: per-case test Dice, method ids.
    """
    ids = {r["method"] for r in rows}
    scores = selection_scores(rows)
    chosen = choose_default(rows)
    hypotheses_text = ""  # the second study's section, made from method ids (before the labels below)
    if HYPOTHESIS_METHODS <= ids:
        hypotheses = judge_hypotheses(cases)
        plot_hypotheses(cases, hypotheses, report_dir / "figures" / "hypotheses.png")
        hypotheses_text = "\n" + hypotheses_markdown(hypotheses) + "\n" + beside_hypotheses_markdown(rows, cases)
    rows = [_with_labels(r) for r in rows]
    cases = [_with_labels(c) for c in cases]
    label = method_label
    reported = [label(m) for m in REPORTED_METHODS]
    safe, raced, plain, better = label(SAFE), label(SAFE_RACED), label(PLAIN), label(BETTER_OF_PLAIN_AND_SCRATCH)
    table = markdown_table(rows, cases, reported, baseline=plain, highlight=label(DEFAULT_RISK))
    if SAFE in ids:
        table += (
            "\nSafe transfer: per scenario and seed, the candidate that the bundles' selection rule "
            "(`transrisk_components/bundle/selection.py`, validation cases only) picks, and the same rule after "
            "racing; compared with plain fine-tuning and with the per-seed better of plain fine-tuning and scratch "
            "by test Dice (an oracle), paired over (seed, test case) with the seed-bootstrap CI (points). Chosen counts are in "
            "candidate order.\n\n"
            + safe_transfer_table(rows, cases, safe, raced, plain, better, [label(m) for m in SAFE_CANDIDATES])
            + "\nPer region:\n\n"
            + region_table(cases, [(safe, plain), (safe, better), (raced, safe)])
        )
    table += (
        "\nPer region (negative transfer shows as plain fine-tuning - from scratch below 0; a comparison appears "
        "where both methods ran):\n\n"
        + region_table(cases, [(label(m), label(b)) for m, b in REGION_COMPARISONS])
    )
    if len(scores) > 1:
        table += (
            "\nSelection rule (`choose_default`, validation Dice only): mean over scenarios of the mean validation "
            "Dice over seeds (%), ties within 0.5 points go to the earlier candidate:\n\n"
            + "".join(f"- {label(m)}: {100 * v:.1f}\n" for m, v in sorted(scores.items(), key=lambda item: -item[1]))
            + f"\nChosen: **{label(chosen)}**.\n"
        )
    table += hypotheses_text
    if SAFE_COMPOSITE in ids:
        composite, ensemble, best = label(SAFE_COMPOSITE), label(SAFE_ENSEMBLE), label(BEST_CANDIDATE)
        table += (
            "\nExploratory, not a registered hypothesis: safe transfer that may also keep the per-region composite "
            "(each region from the candidate best on it on validation), per region against safe transfer with "
            "ensembles and against the best single candidate (test oracle):\n\n"
            + region_table(cases, [(composite, ensemble), (composite, best)])
        )
    atomic_write_text(report_dir / "table.md", table)
    figures = report_dir / "figures"
    plot_method_comparison(cases, reported, figures / "dice_by_method.png")
    plot_paired_differences(cases, reported, plain, figures / "paired_differences.png")
    if SAFE in ids:
        plot_paired_differences(cases, [safe, raced, *(label(m) for m in SAFE_CANDIDATES)], better,
                                figures / "safe_vs_better_of_plain_and_scratch.png")
    if DEFAULT_RISK in ids and PLAIN in ids:
        plot_runs_against_baseline(rows, label(DEFAULT_RISK), plain, figures / "runs_default_vs_plain.png")
    if sum(any(c["scenario"] == s for c in cases) for s in FEW_SHOT_CURVE.values()) >= 2:
        plot_few_shot_curve(cases, FEW_SHOT_CURVE, reported, figures / "few_shot_curve.png")


def hypothesis_comparisons(cases: Sequence[Mapping[str, Any]]) -> list[CriterionEntry]:
    """The comparisons H1-H3 rest on, per scenario (sorted): ``safe_ensemble`` minus the best single candidate (H1),
    plain x3 and risk map x3 (H2), the better of plain and scratch (H3), each with its seed CI and whether it meets
    its hypothesis's criterion in that scenario (H2 needs both of its comparisons to). :func:`judge_hypotheses`
    judges; this only lays the same comparisons out for :func:`plot_hypotheses`.

    Args:
        cases: per-case test Dice, method ids (a report with :data:`HYPOTHESIS_METHODS`).
    """
    criteria = {  # baseline -> (row label, whether a comparison meets its hypothesis's criterion)
        BEST_CANDIDATE: ("- best single candidate (H1)", lambda s: s.seed_low >= -H1_MARGIN),
        PLAIN_RESTARTS: ("- plain x3 (H2)", lambda s: s.seed_low > 0),
        RISK_RESTARTS: ("- risk map x3 (H2)", lambda s: s.seed_low > 0),
        BETTER_OF_PLAIN_AND_SCRATCH: ("- better of plain and scratch (H3)", lambda s: s.seed_high >= 0),
    }
    entries = []
    for baseline, (label, met) in criteria.items():
        for (scenario, method), stat in paired_case_statistics(cases, baseline).items():
            if method == SAFE_ENSEMBLE:
                entries.append(CriterionEntry(scenario, label, stat, met(stat)))
    return sorted(entries, key=lambda e: e.panel)


def beside_hypotheses_markdown(rows: Sequence[Mapping[str, Any]], cases: Sequence[Mapping[str, Any]]) -> str:
    """What the registration reports beside H1-H3 without testing it, per scenario: in how many seeds safe transfer
    with ensembles kept an ensemble, ``safe_ensemble - safe`` (which the ensembles' default also reads), and safe
    transfer without ensembles minus each baseline of the hypotheses; differences in points with seed CIs.

    Args:
        rows: cell and derived rows, method ids (``safe_ensemble`` rows with ``chosen``).
        cases: per-case test Dice, method ids.
    """

    def text(stat: PairedStatistics) -> str:
        return f"{100 * stat.mean:+.1f} seeds [{100 * stat.seed_low:+.1f}, {100 * stat.seed_high:+.1f}]"

    baselines = (BEST_CANDIDATE, PLAIN_RESTARTS, RISK_RESTARTS, BETTER_OF_PLAIN_AND_SCRATCH)
    ensembles = {m.id for m in DERIVED_METHODS.values() if m.group == "ensemble"}
    against_safe = paired_case_statistics(cases, SAFE)
    safe_against = {b: paired_case_statistics(cases, b) for b in baselines}
    lines = ["Reported beside the hypotheses, not tested (registration): how often validation kept an ensemble, "
             f"{method_label(SAFE_ENSEMBLE)} - {method_label(SAFE)}, and {method_label(SAFE)} (without ensembles) "
             "minus the hypotheses' baselines; points, seed CIs:", ""]
    for scenario in sorted({c["scenario"] for c in cases}):
        kept = [r["chosen"] in ensembles for r in rows if r["scenario"] == scenario and r["method"] == SAFE_ENSEMBLE]
        parts = [f"an ensemble kept in {sum(kept)} of {len(kept)} seeds",
                 f"{method_label(SAFE_ENSEMBLE)} - {method_label(SAFE)} {text(against_safe[(scenario, SAFE_ENSEMBLE)])}"]
        parts += [f"{method_label(SAFE)} - {method_label(b)} {text(safe_against[b][(scenario, SAFE)])}" for b in baselines]
        lines.append(f"- {scenario}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def plot_hypotheses(cases: Sequence[Mapping[str, Any]], hypotheses: Sequence[Hypothesis], out_png: Path) -> Path:
    """:func:`hypothesis_comparisons` as a forest plot, one panel per scenario, green where a comparison meets its
    criterion; the verdicts of ``hypotheses`` (:func:`judge_hypotheses` on the same ``cases``) in the title."""
    verdicts = "; ".join(f"{h.name} {'held' if h.held else 'failed'}" for h in hypotheses)
    return plot_criteria_forest(
        hypothesis_comparisons(cases),
        f"{method_label(SAFE_ENSEMBLE)} minus ... (test Dice, 95% seed-bootstrap CI): {verdicts}",
        out_png, reference_lines={f"H1 bound ({-100 * H1_MARGIN:+.1f})": -100 * H1_MARGIN},
    )


def write_readme(report_dir: Path) -> None:
    """``README.md`` of a report folder, made only from the folder's own generated files, never by hand.

    It holds ``machine.md`` (the command and machine that made the cells), links to the report-level figures and the
    whole of ``table.md``, so that every figure a reader meets on opening the folder comes from a generated table.
    ``reproduce.py run`` and ``reproduce.py table`` rewrite it.
    """
    machine = report_dir / "machine.md"
    made = machine.read_text().split("\n", 1)[1].strip() if machine.is_file() else "(no machine.md in this folder)"
    figures = sorted((report_dir / "figures").glob("*.png"))
    text = (
        f"# Results: `{report_dir.name}`\n\n"
        f"Generated from this folder's `results.csv` and `results_per_case.csv` by "
        f"`python scripts/reproduce.py table {report_dir.name}/results.csv`; do not edit by hand.\n\n"
        f"## How it was made\n\n{made}\n\n"
        + ("## Figures\n\n" + "".join(f"- [{png.stem.replace('_', ' ')}](figures/{png.name})\n" for png in figures) + "\n"
           if figures else "")
        + "## Tables\n\n" + (report_dir / "table.md").read_text()
    )
    atomic_write_text(report_dir / "README.md", text)


def combine_reports(parts: Sequence[Path], report_dir: Path) -> None:
    """One report over several report folders of the same profile, run part by part (``--scenarios``).

    Writes ``results.csv``, ``results_per_case.csv``, the validation CSVs (the parts' rows one after another),
    ``machine.md`` (each part's own notes, quoted), ``table.md``, the figures and ``README.md``.

    Raises:
        ValueError: naming both folders when two parts hold the same (scenario, method, seed), or when a part has no
            ``results.csv``.
    """
    rows: list[dict[str, Any]] = []
    cases: list[dict[str, Any]] = []
    owner: dict[tuple[str, str, str], Path] = {}
    for part in parts:
        if not (part / "results.csv").is_file():
            raise ValueError(f"{part}: no results.csv; give report folders written by reproduce.py run")
        part_rows, part_cases = load_results(part / "results.csv")
        for row in part_rows:
            key = (row["scenario"], row["method"], str(row["seed"]))
            if key in owner:
                raise ValueError(f"{key} is in both {owner[key]} and {part}; combine parts that ran different cells")
            owner[key] = part
        rows += part_rows
        cases += part_cases
    report_dir.mkdir(parents=True, exist_ok=True)
    write_results_csv(rows, report_dir / "results.csv")
    write_case_results_csv(cases, report_dir / "results_per_case.csv")
    for name in ("validation_per_case.csv", "validation_curves.csv"):
        texts = [(part / name).read_text().splitlines() for part in parts if (part / name).is_file()]
        if texts:
            atomic_write_text(report_dir / name, "\n".join(texts[0][:1] + [line for t in texts for line in t[1:]]) + "\n")
    notes = ["# How these results were made", "", "Combined from report folders made part by part:", ""]
    for part in parts:
        machine = part / "machine.md"
        body = machine.read_text().split("\n", 1)[1].strip() if machine.is_file() else "(no machine.md)"
        notes += [f"## `{part.name}`", "", body, ""]
    atomic_write_text(report_dir / "machine.md", "\n".join(notes))
    write_table_and_figures(rows, cases, report_dir)
    write_readme(report_dir)


def copy_cell_figures(cells: Sequence[Cell], work_dir: Path, report_dir: Path) -> None:
    """Copy the risk overlays and learning curves of ``cells`` into ``figures/<scenario>/<method id>_<name>.png``."""
    figures = report_dir / "figures"
    for cell in cells:
        for png in sorted(cell.folder(work_dir).glob("eval/**/*.png")):
            target = figures / cell.scenario.name / f"{cell.method.id}_{png.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, target)
