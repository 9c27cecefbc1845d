"""The source-ranking study's summary: do the rankings of candidate sources predict which fine-tunes best?

Input: one CSV row per (scenario, candidate, seed) with the candidate's pooled LEEP and its GBC over the scenario's
target training cases (``source_ranking.csv`` of ``rank_sources``), its own validation Dice on its source task, and
the test Dice of the model fine-tuned from it (:data:`COLUMNS`;
:func:`~transrisk_components.experiments.ranking.run_ranking_study` makes them).

Per scenario the scores and the test Dice are averaged over seeds, and each ranker of :data:`RANKERS` (LEEP, GBC, the
source's own validation Dice, a random order with a fixed seed) is compared with the test Dice by

- the weighted Kendall tau (``scipy.stats.weightedtau`` with its defaults: hyperbolic weights ``1 / (r + 1)`` on the
  rank ``r``, so swaps near the top count most; the average of the two directions), the study's statistic, with a
  95% percentile CI from :data:`BOOTSTRAP` resamples of the seeds (the same seeds drawn for every scenario and
  candidate, as a seed's sources are shared; scores and test Dice re-averaged over the drawn seeds);
- Kendall's tau-b (``scipy.stats.kendalltau``), unweighted;
- the top-1 gap: best test Dice minus the test Dice of the candidate the ranker puts first, in Dice points.

A ranker's study value is the mean of its per-scenario values. The goal (:data:`GOAL_TAU`, :data:`GOAL_TOP1_POINTS`)
is fixed here and printed beside the measurements.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau, weightedtau

from transrisk_components.reporting.figures import plot_ranking_study
from transrisk_components.utils.io import atomic_write_text

__all__ = [
    "BOOTSTRAP", "COLUMNS", "GOAL_TAU", "GOAL_TOP1_POINTS", "RANDOM_SEED", "RANKERS", "bootstrap_cis",
    "per_candidate", "ranker_taus", "read_results", "summarise",
]

COLUMNS = ("scenario", "candidate", "seed", "leep", "gbc", "source_val_dice", "test_dice")
SCORES = ("leep", "gbc", "source_val_dice")
RANKERS = ("leep", "gbc", "source_val_dice", "random")
RANKER_LABELS = {"leep": "LEEP", "gbc": "GBC", "source_val_dice": "source val Dice", "random": "random"}
RANDOM_SEED = 0
#: Seed resamples for the CIs.
BOOTSTRAP = 2000
#: The goal: weighted tau at least this, and the top-ranked source within this many Dice points of the best.
GOAL_TAU = 0.6
GOAL_TOP1_POINTS = 1.0


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a results CSV with :data:`COLUMNS`, scores as floats, seeds as ints.

    Raises:
        ValueError: a column is missing (the message names the file).
    """
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}; expected {list(COLUMNS)} (re-run the study to "
                             f"remake it)")
        rows = list(reader)
    for row in rows:
        for key in (*SCORES, "test_dice"):
            row[key] = float(row[key])
        row["seed"] = int(row["seed"])
    return rows


def per_candidate(
    rows: list[dict[str, Any]], seeds: Sequence[int] | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """scenario -> candidate -> mean over seeds of the scores and test_dice (and the seed count).

    Args:
        seeds: the seeds to average over, repeats counted (a bootstrap resample); ``None``: every row once.
    """
    groups: dict[tuple[str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        groups[(row["scenario"], row["candidate"])][row["seed"]] = row
    table: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for (scenario, candidate), by_seed in sorted(groups.items()):
        members = list(by_seed.values()) if seeds is None else [by_seed[s] for s in seeds if s in by_seed]
        table[scenario][candidate] = {
            key: float(np.mean([m[key] for m in members])) for key in (*SCORES, "test_dice")
        } | {"seeds": len(members)}
    return dict(table)


def _top1_gap(scores: list[float], dice: list[float]) -> float:
    """Best Dice minus the Dice of the highest score (first of equal ones), in Dice points; ``nan`` without scores."""
    finite = [i for i, s in enumerate(scores) if math.isfinite(s)]
    if not finite:
        return math.nan
    first = max(finite, key=lambda i: (scores[i], -i))
    return 100.0 * (max(dice) - dice[first])


def ranker_taus(table: dict[str, dict[str, dict[str, float]]], seed: int = RANDOM_SEED) -> list[dict[str, Any]]:
    """Per (scenario, ranker): ``{"scenario", "ranker", "candidates", "weighted_tau", "kendall_tau", "top1",
    "top1_gap_points"}`` against the fine-tuned test Dice (``nan`` where undefined, e.g. one candidate)."""
    out = []
    for scenario, candidates in sorted(table.items()):
        rng = np.random.default_rng(seed)  # the same random order for every resample of a scenario
        names = sorted(candidates)
        dice = [candidates[n]["test_dice"] for n in names]
        scores = {key: [candidates[n][key] for n in names] for key in SCORES}
        scores["random"] = list(rng.permutation(len(names)).astype(float))
        for ranker in RANKERS:
            values = scores[ranker]
            usable = len(names) > 1 and all(math.isfinite(v) for v in values)
            weighted = weightedtau(values, dice).statistic if usable else math.nan
            tau_b = kendalltau(values, dice).statistic if usable else math.nan
            gap = _top1_gap(values, dice)
            top = names[max(range(len(names)), key=lambda i: (values[i], -i))] if math.isfinite(gap) else ""
            out.append({"scenario": scenario, "ranker": ranker, "candidates": len(names),
                        "weighted_tau": float(weighted), "kendall_tau": float(tau_b), "top1": top,
                        "top1_gap_points": gap})
    return out


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def bootstrap_cis(
    rows: list[dict[str, Any]], seed: int = RANDOM_SEED, resamples: int = BOOTSTRAP
) -> dict[tuple[str, str], tuple[float, float]]:
    """95% percentile CIs of the weighted tau by resampling seeds: ``(scenario, ranker) -> (low, high)``, with the
    scenario ``"mean"`` for the mean over scenarios. With ``n`` seeds there are only ``C(2n - 1, n)`` distinct
    resamples (10 for 3 seeds), so the CI is coarse; with one seed there is none (``nan``)."""
    seeds = sorted({row["seed"] for row in rows})
    rng = np.random.default_rng(seed)
    draws: dict[tuple[str, str], list[float]] = defaultdict(list)
    for _ in range(resamples if len(seeds) > 1 else 0):
        taus = ranker_taus(per_candidate(rows, list(rng.choice(seeds, size=len(seeds), replace=True))), seed)
        for t in taus:
            draws[(t["scenario"], t["ranker"])].append(t["weighted_tau"])
        for ranker in RANKERS:
            draws[("mean", ranker)].append(_mean([t["weighted_tau"] for t in taus if t["ranker"] == ranker]))
    cis = {(t["scenario"], t["ranker"]): (math.nan, math.nan) for t in ranker_taus(per_candidate(rows), seed)}
    cis |= {("mean", ranker): (math.nan, math.nan) for ranker in RANKERS}
    for key, values in draws.items():
        finite = [v for v in values if math.isfinite(v)]
        cis[key] = (float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))) if finite else (math.nan, math.nan)
    return cis


def _fmt(value: float, digits: int = 3) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.{digits}f}"


def _goal_met(tau: float, gap: float) -> str:
    return "yes" if math.isfinite(tau) and tau >= GOAL_TAU and math.isfinite(gap) and gap <= GOAL_TOP1_POINTS else "no"


def summarise(results: str, report_dir: str, seed: int = RANDOM_SEED, resamples: int = BOOTSTRAP) -> float:
    """Write ``ranking_study.csv`` (per scenario and ranker, and their means), ``ranking_study.md`` and
    ``ranking_study.png`` (each ranker's scores against the fine-tuned test Dice) under ``report_dir``; print
    ``ranking: kendall tau = <t> over <k> candidates`` as the last line (``t``: LEEP's weighted tau, mean over
    scenarios; ``k``: candidates per scenario, the smallest count where they differ) and return ``t``.

    Args:
        results: the results CSV, as the report should quote it (e.g. relative to the repository root).
        report_dir: the report folder, quoted the same way.
        seed: of the random ranker and of the bootstrap.
        resamples: bootstrap resamples of the seeds.
    """
    rows = read_results(results)
    table = per_candidate(rows)
    taus = ranker_taus(table, seed)
    cis = bootstrap_cis(rows, seed, resamples)
    k = min(len(c) for c in table.values())
    seeds = sorted({row["seed"] for row in rows})
    overall = {}
    for ranker in RANKERS:
        mine = [t for t in taus if t["ranker"] == ranker]
        overall[ranker] = {"scenario": "mean", "ranker": ranker, "candidates": k,
                           "weighted_tau": _mean([t["weighted_tau"] for t in mine]),
                           "kendall_tau": _mean([t["kendall_tau"] for t in mine]), "top1": "",
                           "top1_gap_points": _mean([t["top1_gap_points"] for t in mine]),
                           "worst_gap": max((t["top1_gap_points"] for t in mine), default=math.nan)}
    out = Path(report_dir)
    text = io.StringIO()
    fields = ["scenario", "ranker", "candidates", "weighted_tau", "weighted_tau_ci_low", "weighted_tau_ci_high",
              "kendall_tau", "top1", "top1_gap_points"]
    writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for t in [*taus, *overall.values()]:
        low, high = cis[(t["scenario"], t["ranker"])]
        writer.writerow({**t, "weighted_tau": _fmt(t["weighted_tau"], 4), "weighted_tau_ci_low": _fmt(low, 4),
                         "weighted_tau_ci_high": _fmt(high, 4), "kendall_tau": _fmt(t["kendall_tau"], 4),
                         "top1_gap_points": _fmt(t["top1_gap_points"], 2)})
    atomic_write_text(out / "ranking_study.csv", text.getvalue())
    goal = (f"Goal: weighted tau >= {GOAL_TAU} and the top-ranked source within {GOAL_TOP1_POINTS:g} Dice point of "
            f"the best.")
    lines = [
        "# Source ranking study",
        "",
        f"**{goal}**",
        "",
        f"Weighted Kendall tau (`scipy.stats.weightedtau`, top-weighted) between each ranker's scores and the "
        f"fine-tuned test Dice (both mean over seeds), per target scenario, with a 95% CI from {resamples} bootstrap "
        f"resamples of the {len(seeds)} seed(s) (coarse: few seeds allow few distinct resamples; none with one seed, "
        f"shown as nan); Kendall's "
        f"tau-b beside it; top-1 gap: the best test Dice minus that of the ranker's first choice, in Dice points; "
        f"goal met on the mean row: the mean tau and every scenario's gap. "
        f"{k} candidates per scenario, from `{results}`. Random order: seed {seed}.",
        "",
        "| ranker | scenario | weighted tau [95% CI] | tau-b | top-1 choice | top-1 gap (points) | goal met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for ranker in RANKERS:
        for t in [*(t for t in taus if t["ranker"] == ranker), overall[ranker]]:
            low, high = cis[(t["scenario"], ranker)]
            name = f"**{t['scenario']}**" if t["scenario"] == "mean" else t["scenario"]
            lines.append(f"| {RANKER_LABELS[ranker]} | {name} | {_fmt(t['weighted_tau'])} [{_fmt(low)}, {_fmt(high)}] "
                         f"| {_fmt(t['kendall_tau'])} | {t['top1']} | {_fmt(t['top1_gap_points'], 1)} "
                         f"| {_goal_met(t['weighted_tau'], t.get('worst_gap', t['top1_gap_points']))} |")
    lines += ["", f"![scores against fine-tuned test Dice](ranking_study.png)", "", goal, "",
              "| scenario | candidate | seeds | LEEP | GBC | source val Dice | fine-tuned test Dice |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for scenario, candidates in sorted(table.items()):
        for name, v in sorted(candidates.items(), key=lambda item: -item[1]["test_dice"]):
            lines.append(f"| {scenario} | {name} | {v['seeds']} | {v['leep']:.4f} | {_fmt(v['gbc'])} | "
                         f"{v['source_val_dice']:.3f} | {v['test_dice']:.3f} |")
    lines += ["", f"Command: `python scripts/ranking_study.py summarise --results {results} --report_dir {report_dir}`", ""]
    atomic_write_text(out / "ranking_study.md", "\n".join(lines))
    titles = {(t["scenario"], t["ranker"]): f"{t['scenario']}: weighted tau {_fmt(t['weighted_tau'], 2)}, top-1 gap "
              f"{_fmt(t['top1_gap_points'], 1)} points" for t in taus}
    plot_ranking_study(table, [(r, RANKER_LABELS[r]) for r in SCORES], titles, goal, out / "ranking_study.png")
    print(f"ranking: kendall tau = {overall['leep']['weighted_tau']:.3f} over {k} candidates")
    sys.stdout.flush()
    return overall["leep"]["weighted_tau"]
