"""The source-ranking study's summary: does the LEEP ranking of candidate sources predict which fine-tunes best?

Input: one CSV row per (scenario, candidate, seed) with the candidate's pooled LEEP over the scenario's target
training cases (``source_ranking.csv`` of ``rank_sources``), its own validation Dice on its source task, and the
test Dice of the model fine-tuned from it (:data:`COLUMNS`; :func:`~transrisk_components.experiments.ranking.run_ranking_study`
makes them).

Per scenario the test Dice is averaged over seeds, and three rankers are compared with it by Kendall's tau
(``scipy.stats.kendalltau``, tau-b): LEEP, the source's own validation Dice, and a random order (a fixed seed).
The reported tau of a ranker is the mean of its per-scenario taus.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau

from transrisk_components.reporting.figures import plot_ranking_study
from transrisk_components.utils.io import atomic_write_text

__all__ = ["COLUMNS", "RANDOM_SEED", "RANKERS", "per_candidate", "ranker_taus", "read_results", "summarise"]

COLUMNS = ("scenario", "candidate", "seed", "leep", "gbc", "source_val_dice", "test_dice")
RANKERS = ("leep", "source_val_dice", "random")
RANDOM_SEED = 0


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a results CSV with :data:`COLUMNS`, scores as floats.

    Raises:
        ValueError: a column is missing (the message names the file).
    """
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}; expected {list(COLUMNS)}")
        rows = list(reader)
    for row in rows:
        for key in ("leep", "source_val_dice", "test_dice"):
            row[key] = float(row[key])
    return rows


def per_candidate(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """scenario -> candidate -> mean over seeds of leep, source_val_dice, test_dice (and the seed count)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["scenario"], row["candidate"])].append(row)
    table: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for (scenario, candidate), members in sorted(groups.items()):
        table[scenario][candidate] = {
            key: float(np.mean([m[key] for m in members])) for key in ("leep", "source_val_dice", "test_dice")
        } | {"seeds": len(members)}
    return dict(table)


def ranker_taus(table: dict[str, dict[str, dict[str, float]]], seed: int = RANDOM_SEED) -> list[dict[str, Any]]:
    """Kendall's tau between each ranker's scores and the fine-tuned test Dice, one dict per (scenario, ranker)."""
    rng = np.random.default_rng(seed)
    out = []
    for scenario, candidates in sorted(table.items()):
        names = sorted(candidates)
        dice = [candidates[n]["test_dice"] for n in names]
        scores = {
            "leep": [candidates[n]["leep"] for n in names],
            "source_val_dice": [candidates[n]["source_val_dice"] for n in names],
            "random": list(rng.permutation(len(names)).astype(float)),
        }
        for ranker in RANKERS:
            tau = kendalltau(scores[ranker], dice).statistic if len(names) > 1 else math.nan
            out.append({"scenario": scenario, "ranker": ranker, "candidates": len(names), "kendall_tau": float(tau)})
    return out


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def summarise(results: str, report_dir: str, seed: int = RANDOM_SEED) -> float:
    """Write ``ranking_study.csv`` (per scenario and ranker), ``ranking_study.md`` and ``ranking_study.png`` (LEEP
    against fine-tuned test Dice) under ``report_dir``; print ``ranking: kendall tau = <t> over <k> candidates``
    (``k``: the (scenario, candidate) pairs) as the last line and return the LEEP ranker's tau.

    Args:
        results: the results CSV, as the report should quote it (e.g. relative to the repository root).
        report_dir: the report folder, quoted the same way.
        seed: of the random ranker.
    """
    rows = read_results(results)
    table = per_candidate(rows)
    taus = ranker_taus(table, seed)
    out = Path(report_dir)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["scenario", "ranker", "candidates", "kendall_tau"])
    writer.writeheader()
    writer.writerows({**t, "kendall_tau": f"{t['kendall_tau']:.4f}"} for t in taus)
    atomic_write_text(out / "ranking_study.csv", text.getvalue())
    overall = {r: _mean([t["kendall_tau"] for t in taus if t["ranker"] == r]) for r in RANKERS}
    k = sum(len(c) for c in table.values())
    lines = [
        "# Source ranking study",
        "",
        f"Kendall's tau (tau-b) between each ranker's scores and the fine-tuned test Dice (mean over seeds), per "
        f"target scenario; {k} (scenario, candidate) pairs from `{results}`. Random order: seed {seed}.",
        "",
        "| scenario | candidates | " + " | ".join(RANKERS) + " |",
        "| --- | --- | " + " | ".join("---" for _ in RANKERS) + " |",
    ]
    for scenario, candidates in sorted(table.items()):
        values = {t["ranker"]: t["kendall_tau"] for t in taus if t["scenario"] == scenario}
        lines.append(f"| {scenario} | {len(candidates)} | " + " | ".join(f"{values[r]:.3f}" for r in RANKERS) + " |")
    lines.append("| mean | " + str(k) + " | " + " | ".join(f"{overall[r]:.3f}" for r in RANKERS) + " |")
    lines += ["", "| scenario | candidate | seeds | LEEP | source val Dice | fine-tuned test Dice |", "| --- | --- | --- | --- | --- | --- |"]
    for scenario, candidates in sorted(table.items()):
        for name, v in sorted(candidates.items(), key=lambda item: -item[1]["leep"]):
            lines.append(
                f"| {scenario} | {name} | {v['seeds']} | {v['leep']:.4f} | {v['source_val_dice']:.3f} | {v['test_dice']:.3f} |"
            )
    lines += ["", f"Command: `python scripts/ranking_study.py summarise --results {results} --report_dir {report_dir}`", ""]
    atomic_write_text(out / "ranking_study.md", "\n".join(lines))
    plot_ranking_study(table, out / "ranking_study.png")
    print(f"ranking: kendall tau = {overall['leep']:.3f} over {k} candidates")
    sys.stdout.flush()
    return overall["leep"]
