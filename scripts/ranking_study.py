"""Does the LEEP ranking of candidate source models predict which one fine-tunes best? (issue #14, part 3)

Input: one CSV row per (scenario, candidate, seed) with the candidate's pooled LEEP over the scenario's target
training cases (``eval/source_ranking.csv`` of ``rank_sources``), its own validation Dice on its source task, and the
test Dice of the model fine-tuned from it::

    scenario,candidate,seed,leep,source_val_dice,test_dice

Per scenario the test Dice is averaged over seeds, and three rankers are compared with it by Kendall's tau
(``scipy.stats.kendalltau``, tau-b): LEEP, the source's own validation Dice, and a random order (a fixed seed).
The reported tau of a ranker is the mean of its per-scenario taus. Writes ``ranking_study.csv`` (per scenario and
ranker), ``ranking_study.md`` and ``ranking_study.png`` (LEEP against fine-tuned test Dice) under ``--report_dir``,
and prints as its last line ``ranking: kendall tau = <t> over <k> candidates`` (``k``: the (scenario, candidate)
pairs).

Usage (from the repository root)::

    python scripts/ranking_study.py summarise --results outputs/ranking/results.csv --report_dir docs/results/ranking

Producing ``results.csv`` (training >= 4 candidate sources, ``rank_sources`` per target scenario, fine-tuning from
each candidate over 3 seeds) is the experiment grid's job (``scripts/experiments.py`` / ``scripts/reproduce.py``).
"""

from __future__ import annotations

import csv
import io
import math
import sys
from collections import defaultdict
from pathlib import Path

import fire
import numpy as np
from scipy.stats import kendalltau

from transrisk_components.reporting.figures import plot_ranking_study
from transrisk_components.utils.io import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("scenario", "candidate", "seed", "leep", "source_val_dice", "test_dice")
RANKERS = ("leep", "source_val_dice", "random")
RANDOM_SEED = 0


def read_results(path: str | Path) -> list[dict]:
    """The rows of a results CSV (see the module docstring); ``ValueError`` naming the file on a missing column."""
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


def per_candidate(rows: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """scenario -> candidate -> mean over seeds of leep, source_val_dice, test_dice (and the seed count)."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["scenario"], row["candidate"])].append(row)
    table: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for (scenario, candidate), members in sorted(groups.items()):
        table[scenario][candidate] = {
            key: float(np.mean([m[key] for m in members])) for key in ("leep", "source_val_dice", "test_dice")
        } | {"seeds": len(members)}
    return dict(table)


def ranker_taus(table: dict[str, dict[str, dict[str, float]]], seed: int = RANDOM_SEED) -> list[dict]:
    """Kendall's tau between each ranker's scores and the fine-tuned test Dice, per scenario."""
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


def summarise(results: str, report_dir: str = str(REPO_ROOT / "docs" / "results" / "ranking"), seed: int = RANDOM_SEED) -> float:
    """Write the study's CSV, Markdown and PNG; print the LEEP ranker's tau as the last line and return it."""
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


def _summarise_command(results: str, report_dir: str = str(REPO_ROOT / "docs" / "results" / "ranking"), seed: int = RANDOM_SEED) -> None:
    """``summarise`` for the command line: nothing printed after its last line."""
    summarise(results, report_dir, seed)


if __name__ == "__main__":
    fire.Fire({"summarise": _summarise_command})
