"""Reports of an experiment grid: ``results.csv``, the paper-style ``table.md`` and the comparison figure.

Rows are the per-cell dicts that ``scripts/experiments.py`` (``run_cell``) writes to ``result.json``
(``scenario``, ``method``, ``seed``, ``val_dice``, ``test_dice``, ... with Dice in [0, 1]).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from transrisk_components.utils.io import atomic_write, atomic_write_text  # noqa: E402

__all__ = [
    "load_results_csv",
    "markdown_table",
    "paired_differences",
    "plot_method_comparison",
    "read_results",
    "summarise_results",
    "write_results_csv",
]


def read_results(root: Path) -> list[dict[str, Any]]:
    """Every finished cell's row under ``root/cells``, in a stable order."""
    rows = [json.loads(p.read_text()) for p in sorted((root / "cells").glob("*/*/seed*/result.json"))]
    return sorted(rows, key=lambda r: (r["scenario"], r["group"], r["method"], r["seed"]))


def write_results_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """One CSV row per cell (columns: the union of the rows' keys, first-seen order)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def load_results_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``results.csv``, numbers parsed."""
    with Path(path).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key, value in row.items():
            if key not in ("scenario", "kind", "bundle", "method", "group"):
                row[key] = float(value) if value not in ("", None) else math.nan
    return rows


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan, 0
    mean = sum(finite) / len(finite)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else 0.0
    return mean, std, len(finite)


def summarise_results(rows: Iterable[Mapping[str, Any]], metric: str = "test_dice") -> dict[tuple[str, str], tuple[float, float, int]]:
    """``(scenario, method) -> (mean, sample std, n seeds)`` of ``metric``."""
    groups: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        groups.setdefault((row["scenario"], row["method"]), []).append(float(row[metric]))
    return {key: _mean_std(values) for key, values in groups.items()}


def paired_differences(
    rows: Iterable[Mapping[str, Any]], baseline: str, metric: str = "test_dice"
) -> dict[tuple[str, str], tuple[float, float, int]]:
    """``(scenario, method) -> (mean, sample std, n)`` of ``metric(method) - metric(baseline)`` paired by seed."""
    by_key = {(r["scenario"], r["method"], int(r["seed"])): float(r[metric]) for r in rows}
    diffs: dict[tuple[str, str], list[float]] = {}
    for (scenario, method, seed), value in by_key.items():
        base = by_key.get((scenario, baseline, seed))
        if method != baseline and base is not None:
            diffs.setdefault((scenario, method), []).append(value - base)
    return {key: _mean_std(values) for key, values in diffs.items()}


def _fmt(stat: tuple[float, float, int] | None, signed: bool = False) -> str:
    if stat is None or math.isnan(stat[0]):
        return "--"
    mean, std, _ = stat
    sign = "+" if signed and mean >= 0 else ""
    return f"{sign}{100 * mean:.1f} ± {100 * std:.1f}"


def _present(rows: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> list[str]:
    """``methods`` (report order) that have at least one row."""
    return [m for m in methods if any(r["method"] == m for r in rows)]


def markdown_table(rows: Sequence[Mapping[str, Any]], methods: Sequence[str], baseline: str, highlight: str) -> str:
    """Paper-style tables: test Dice (%) mean ± std over seeds, and the paired difference to ``baseline``.

    Args:
        rows: one dict per (scenario, method, seed) with ``val_dice`` and ``test_dice``.
        methods: method names in report order.
        baseline: the method the differences are taken to (plain fine-tuning).
        highlight: the method whose verdict per scenario is spelled out (the risk map's default).
    """
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    methods = _present(rows, methods)
    dice = summarise_results(rows)
    diffs = paired_differences(rows, baseline)
    val = summarise_results(rows, "val_dice")
    seeds = sorted({int(r["seed"]) for r in rows})
    lines = [
        f"Test Dice (%), mean ± sample std over seeds {seeds}; Dice averaged over the target task's regions.",
        "",
        "| method | " + " | ".join(scenarios) + " |",
        "|---|" + "---|" * len(scenarios),
    ]
    lines += [f"| {m} | " + " | ".join(_fmt(dice.get((s, m))) for s in scenarios) + " |" for m in methods]
    lines += [
        "",
        f"Paired difference to {baseline} (test Dice, percentage points), mean ± sample std over seeds.",
        "",
        "| method | " + " | ".join(scenarios) + " |",
        "|---|" + "---|" * len(scenarios),
    ]
    lines += [
        f"| {m} | " + " | ".join(_fmt(diffs.get((s, m)), signed=True) for s in scenarios) + " |"
        for m in methods
        if m != baseline
    ]
    verdicts = []
    for s in scenarios:
        d = diffs.get((s, highlight))
        if d is None or math.isnan(d[0]):
            continue
        mean, std, n = d
        if mean > std:
            verdict = "beats plain fine-tuning (mean gain larger than its seed spread)"
        elif mean > 0:
            verdict = "no clear gain over plain fine-tuning (mean gain within its seed spread)"
        else:
            verdict = "does NOT beat plain fine-tuning"
        verdicts.append(f"- {s}: risk-weighted {_fmt(d, signed=True)} points over {n} seeds: {verdict}.")
    if verdicts:
        lines += ["", "Verdict per scenario (default risk weighting vs plain fine-tuning):", "", *verdicts]
    lines += [
        "",
        "Validation Dice (%) (target-val cases; used to choose defaults, never the test cases).",
        "",
        "| method | " + " | ".join(scenarios) + " |",
        "|---|" + "---|" * len(scenarios),
    ]
    lines += [f"| {m} | " + " | ".join(_fmt(val.get((s, m))) for s in scenarios) + " |" for m in methods]
    return "\n".join(lines) + "\n"


def plot_method_comparison(rows: Sequence[Mapping[str, Any]], methods: Sequence[str], out_png: Path) -> Path:
    """Grouped bars: test Dice per scenario (groups) and method (bars, in ``methods`` order), error bars one
    sample std over seeds."""
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    methods = _present(rows, methods)
    stats = summarise_results(rows)
    width = 0.8 / len(methods)
    x = np.arange(len(scenarios))
    figure, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(scenarios) * max(1.0, len(methods) / 3)), 4.5))
    for i, method in enumerate(methods):
        means = [100 * stats.get((s, method), (math.nan,))[0] for s in scenarios]
        stds = [100 * stats.get((s, method), (math.nan, math.nan))[1] for s in scenarios]
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, np.nan_to_num(means), width, yerr=np.nan_to_num(stds),
               capsize=3, label=method)
    ax.set_xticks(x, scenarios, rotation=15)
    ax.set_ylabel("test Dice (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("Target test Dice by scenario and method (mean ± std over seeds)")
    figure.tight_layout()
    atomic_write(out_png, lambda tmp: figure.savefig(tmp, format="png", dpi=120), suffix=".png")
    plt.close(figure)
    return Path(out_png)
