"""Reports of an experiment grid: ``results.csv``, the paper-style ``table.md`` and the comparison figure.

Rows are the per-cell dicts that ``transrisk_components.experiments.runner.run_cell`` writes to ``result.json``
(``scenario``, ``method``, ``seed``, ``val_dice``, ``test_dice``, ... with Dice in [0, 1]).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from transrisk_components.utils.io import atomic_write, atomic_write_text  # noqa: E402

__all__ = [
    "CASE_COLUMNS",
    "TEXT_COLUMNS",
    "PairedStatistics",
    "case_rows",
    "cases_of_learned_runs",
    "load_case_results_csv",
    "load_results_csv",
    "paired_case_statistics",
    "markdown_table",
    "mean_dice_with_ci",
    "plot_few_shot_curve",
    "plot_method_comparison",
    "plot_paired_differences",
    "plot_runs_against_baseline",
    "region_table",
    "safe_transfer_table",
    "stalled_runs",
    "summarise_results",
    "write_case_results_csv",
    "write_results_csv",
]

#: A run "did not learn" a region when its mean test Dice on that region stays below this (Dice units).
STALLED_DICE = 0.05

#: Columns of ``results.csv`` that hold text, not numbers (``chosen``: the candidate a derived row copies).
TEXT_COLUMNS: tuple[str, ...] = ("scenario", "kind", "bundle", "method", "group", "chosen", "members")
#: Columns of ``results_per_case.csv``: one test Dice per (scenario, method, seed, case, region).
CASE_COLUMNS: tuple[str, ...] = ("scenario", "method", "seed", "case_id", "region", "dice")


def write_results_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """One CSV row per cell (columns: the union of the rows' scalar keys, first-seen order; mappings such as the
    per-case ``test_cases``, which go to :func:`write_case_results_csv`, and the fine-tuning fingerprint are left
    out)."""
    rows = [{k: v for k, v in row.items() if not isinstance(v, Mapping)} for row in rows]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def load_results_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``results.csv``, numbers parsed (the text columns, :data:`TEXT_COLUMNS`, kept as they are)."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key, value in row.items():
            if key not in TEXT_COLUMNS:
                row[key] = float(value) if value not in ("", None) else math.nan
    return rows


def case_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The per-case test Dice of every cell, flattened: one dict per (scenario, method, seed, case, region).

    A cell row carries them as ``test_cases = {case_id: {region: dice}}``; cells without it add nothing.
    """
    return [
        {"scenario": r["scenario"], "method": r["method"], "seed": int(r["seed"]), "case_id": case_id,
         "region": region, "dice": float(dice)}
        for r in rows
        for case_id, regions in r.get("test_cases", {}).items()
        for region, dice in regions.items()
    ]


def write_case_results_csv(cases: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """``results_per_case.csv`` with :data:`CASE_COLUMNS` (rows from :func:`case_rows`)."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(CASE_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: c[k] for k in CASE_COLUMNS} for c in cases)
    return atomic_write_text(path, buffer.getvalue())


def load_case_results_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``results_per_case.csv``, ``seed`` as int and ``dice`` as float."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [{**r, "seed": int(r["seed"]), "dice": float(r["dice"])} for r in rows]


@dataclass(frozen=True)
class PairedStatistics:
    """A method's paired test-Dice difference to the baseline over (seed, case) pairs, in Dice units [-1, 1].

    Inference is at the level of seeds: the test cases of one seed share one trained model, so they are not
    independent draws of what training gives. ``seed_low``/``seed_high`` bound the 95% seed-bootstrap CI of ``mean``
    (whole seeds resampled with replacement, each with all its cases; with the same test cases in every seed, as in
    the grid, that is the bootstrap of the seeds' mean differences); they equal ``mean`` when every seed's mean
    difference is the same, and are NaN with fewer than two seeds. ``without_seed`` holds, per seed in ascending
    order, ``mean`` with that seed left out (empty with fewer than two seeds): how much one seed carries the
    difference.
    """

    mean: float
    n_pairs: int
    n_seeds: int
    seed_low: float = math.nan
    seed_high: float = math.nan
    without_seed: tuple[tuple[int, float], ...] = ()

    @property
    def half_width(self) -> float:
        """Half the width of the seed-bootstrap CI (NaN with fewer than two seeds)."""
        return (self.seed_high - self.seed_low) / 2

    @property
    def carried_most(self) -> tuple[int, float]:
        """``(seed, mean - mean without that seed)`` for the seed whose leaving out moves the mean most (the first
        such seed on a tie). Raises ``ValueError`` with fewer than two seeds."""
        if not self.without_seed:
            raise ValueError(f"leave-one-seed-out needs two seeds or more, got {self.n_seeds}")
        seed, without = max(self.without_seed, key=lambda item: abs(self.mean - item[1]))
        return seed, self.mean - without

    def verdict(self) -> str:
        """``"gain"`` / ``"loss"`` only when the seed-bootstrap CI excludes 0."""
        if self.n_seeds < 2:
            return "one seed: no CI across training runs"
        if self.seed_low > 0:
            return "gain (seed CI above 0)"
        if self.seed_high < 0:
            return "loss (seed CI below 0)"
        return f"no detectable difference (seed CI half-width {100 * self.half_width:.1f} points)"


def _bootstrap_ci(values: np.ndarray, seed: int) -> tuple[float, float]:
    ci = stats.bootstrap(
        (values,), np.mean, confidence_level=0.95, n_resamples=9999, method="percentile", rng=seed
    ).confidence_interval
    return float(ci.low), float(ci.high)


def _seed_clustered_ci(differences: np.ndarray, seeds: np.ndarray, seed: int) -> tuple[float, float]:
    """95% percentile CI of the mean difference with whole seeds resampled (each seed keeps all its cases)."""
    groups = [differences[seeds == s] for s in np.unique(seeds)]
    if len(groups) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    sums, counts = np.array([g.sum() for g in groups]), np.array([g.size for g in groups])
    picks = rng.integers(0, len(groups), size=(9999, len(groups)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def _paired_statistics(differences: np.ndarray, seeds: np.ndarray, seed: int) -> PairedStatistics:
    """Seed-level statistics of ``differences`` (one per (seed, case) pair; ``seeds`` names each pair's seed)."""
    labels = np.unique(seeds)
    mean = float(differences.mean()) if differences.size else math.nan
    if labels.size < 2:
        return PairedStatistics(mean, int(differences.size), int(labels.size))
    seed_means = np.array([differences[seeds == s].mean() for s in labels])
    low, high = (mean, mean) if np.all(seed_means == seed_means[0]) else _seed_clustered_ci(differences, seeds, seed)
    without = tuple((int(s), float(differences[seeds != s].mean())) for s in labels)
    return PairedStatistics(mean, int(differences.size), int(labels.size), low, high, without)


def paired_case_statistics(
    cases: Iterable[Mapping[str, Any]], baseline: str, region: str | None = None, seed: int = 0
) -> dict[tuple[str, str], PairedStatistics]:
    """``(scenario, method) -> PairedStatistics`` of ``Dice(method) - Dice(baseline)`` paired by (seed, case).

    Args:
        cases: rows from :func:`case_rows` / :func:`load_case_results_csv`.
        baseline: the method every other one is compared with.
        region: one region's Dice, or ``None`` for the mean over the case's regions.
        seed: seed of the bootstrap resampling (same seed, same CI).
    """
    per_case: dict[tuple[str, str, int, str], list[float]] = {}
    for c in cases:
        if region is None or c["region"] == region:
            per_case.setdefault((c["scenario"], c["method"], int(c["seed"]), c["case_id"]), []).append(float(c["dice"]))
    dice = {key: float(np.mean(values)) for key, values in per_case.items()}
    differences: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for (scenario, method, run_seed, case_id), value in sorted(dice.items()):
        base = dice.get((scenario, baseline, run_seed, case_id))
        if method != baseline and base is not None:
            differences.setdefault((scenario, method), []).append((run_seed, value - base))
    return {
        key: _paired_statistics(np.array([d for _, d in pairs]), np.array([s for s, _ in pairs]), seed)
        for key, pairs in differences.items()
    }


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


def _finite(value: Any) -> bool:
    """A number that is not NaN (a region the scenario's task does not have is NaN or missing)."""
    try:
        return not math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def _fmt(stat: tuple[float, float, int] | None, signed: bool = False) -> str:
    if stat is None or math.isnan(stat[0]):
        return "--"
    mean, std, _ = stat
    sign = "+" if signed and mean >= 0 else ""
    return f"{sign}{100 * mean:.1f} ± {100 * std:.1f}"


def _present(rows: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> list[str]:
    """``methods`` (report order) that have at least one row."""
    return [m for m in methods if any(r["method"] == m for r in rows)]


def _fmt_count(count: tuple[int, int] | None) -> str:
    return "--" if count is None else f"{count[0]}/{count[1]}"


def _fmt_paired_seeds(stat: PairedStatistics | None) -> str:
    return "--" if stat is None else f"{_fmt_paired(stat)} n={stat.n_seeds}"


def _fmt_paired(stat: PairedStatistics | None) -> str:
    """``mean seeds [low, high]`` in points: the mean paired difference and its seed-bootstrap CI."""
    if stat is None or math.isnan(stat.mean):
        return "--"
    if stat.n_seeds < 2:
        return f"{100 * stat.mean:+.1f} (one seed, no CI)"
    return f"{100 * stat.mean:+.1f} seeds [{100 * stat.seed_low:+.1f}, {100 * stat.seed_high:+.1f}]"


def _fmt_without_seed(stat: PairedStatistics | None) -> str:
    """``low .. high (seed s carries +x)`` in points: the range of the mean paired difference when each seed in turn
    is left out, and the seed that moves it most with the part of the mean it carries (mean - mean without it)."""
    if stat is None or not stat.without_seed:
        return "--"
    values = [value for _, value in stat.without_seed]
    seed, carried = stat.carried_most
    return f"{100 * min(values):+.1f} .. {100 * max(values):+.1f} (seed {seed} carries {100 * carried:+.1f})"


def _stalled(row: Mapping[str, Any], threshold: float) -> bool:
    """Whether the run's mean test Dice on some region of its task is below ``threshold``."""
    return any(float(v) < threshold for k, v in row.items() if k.startswith("test_dice_") and _finite(v))


def stalled_runs(rows: Iterable[Mapping[str, Any]], threshold: float = STALLED_DICE) -> dict[tuple[str, str], tuple[int, int]]:
    """``(scenario, method) -> (runs that did not learn some region, runs)``.

    A run (one seed) did not learn a region when its mean test Dice over the test cases on that region is below
    ``threshold``: the network (almost) never predicts it. On the phantom testbed a few such runs make most of the
    seed-to-seed spread (README, "Where the default's gain comes from").
    """
    counts: dict[tuple[str, str], tuple[int, int]] = {}
    for row in rows:
        stalled, runs = counts.get((row["scenario"], row["method"]), (0, 0))
        counts[(row["scenario"], row["method"])] = (stalled + _stalled(row, threshold), runs + 1)
    return counts


def cases_of_learned_runs(
    rows: Iterable[Mapping[str, Any]], cases: Iterable[Mapping[str, Any]], threshold: float = STALLED_DICE
) -> list[dict[str, Any]]:
    """``cases`` without those of the runs that did not learn a region (:func:`stalled_runs`).

    Paired statistics on the result compare two methods only on the seeds where neither run stalled: the part of a
    difference that does not come from one method stalling more often than the other.
    """
    stalled = {(r["scenario"], r["method"], int(r["seed"])) for r in rows if _stalled(r, threshold)}
    return [dict(c) for c in cases if (c["scenario"], c["method"], int(c["seed"])) not in stalled]


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    cases: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    baseline: str,
    highlight: str,
) -> str:
    """Paper-style tables: test Dice (%) per method (mean and per region), the runs that did not learn a region
    (:func:`stalled_runs`), the paired difference to ``baseline`` with its seed-bootstrap CI (on all seeds, and on
    the seeds where neither run stalled) and its leave-one-seed-out range, a verdict per scenario for ``highlight``,
    and validation Dice. No case-level p-value or CI: the cases of one seed are not independent.

    Args:
        rows: one dict per (scenario, method, seed) with ``val_dice`` and ``test_dice``.
        cases: per-case test Dice, from :func:`case_rows` (pairs for the CIs).
        methods: method names in report order.
        baseline: the method the differences are taken to (plain fine-tuning).
        highlight: the method whose verdict per scenario is spelled out (the risk map's default).
    """
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    methods = _present(rows, methods)
    dice = summarise_results(rows)
    paired = paired_case_statistics(cases, baseline)
    val = summarise_results(rows, "val_dice")
    seeds = sorted({int(r["seed"]) for r in rows})

    def method_table(caption: str, shown: Sequence[str], cell: Callable[[str, str], str]) -> list[str]:
        """A caption, then one row per method in ``shown`` and one column per scenario of ``cell(scenario, method)``."""
        return [caption, "", "| method | " + " | ".join(scenarios) + " |", "|---|" + "---|" * len(scenarios),
                *(f"| {m} | " + " | ".join(cell(s, m) for s in scenarios) + " |" for m in shown)]

    lines = method_table(
        f"Test Dice (%), mean ± sample std over seeds {seeds}; Dice averaged over the target task's regions.",
        methods, lambda s, m: _fmt(dice.get((s, m))),
    )
    regions = [k.removeprefix("test_dice_") for k in dict.fromkeys(k for r in rows for k in r) if k.startswith("test_dice_")]
    lines += ["", "Test Dice (%) per region, mean ± sample std over seeds.", "",
              "| method | scenario | " + " | ".join(regions) + " |", "|---|---|" + "---|" * len(regions)]
    for s in scenarios:
        for m in methods:
            per_region = [
                summarise_results([r for r in rows if _finite(r.get(f"test_dice_{g}"))], f"test_dice_{g}").get((s, m))
                for g in regions
            ]
            if any(stat is not None for stat in per_region):
                lines.append(f"| {m} | {s} | " + " | ".join(_fmt(stat) for stat in per_region) + " |")
    stalled = stalled_runs(rows)
    lines += ["", *method_table(
        f"Runs that did not learn a region (mean test Dice below {100 * STALLED_DICE:.0f}% on at least one region), "
        "out of the runs.",
        methods, lambda s, m: _fmt_count(stalled.get((s, m))),
    )]
    compared = [m for m in methods if m != baseline]
    if paired:
        lines += ["", *method_table(
            f"Paired difference to {baseline} (test Dice, percentage points) over (seed, test case) pairs: mean "
            "seeds [95% seed-bootstrap CI: whole seeds resampled, each with all its test cases, so it counts the "
            "run-to-run variation of training]. A verdict says gain or loss only when this CI excludes 0.",
            compared, lambda s, m: _fmt_paired(paired.get((s, m))),
        )]
        lines += ["", *method_table(
            f"Leave one seed out: the range of the mean paired difference to {baseline} (points) when each seed in "
            "turn is left out, and the seed that moves it most with the part of the mean it carries (mean - mean "
            "without it).",
            compared, lambda s, m: _fmt_without_seed(paired.get((s, m))),
        )]
        learned = paired_case_statistics(cases_of_learned_runs(rows, cases), baseline)
        lines += ["", *method_table(
            "The same, on the seeds where neither run stalled (the pairs of a seed where either method did not learn a "
            "region left out); with the table above it splits a difference into fewer stalled runs and better "
            "segmentation once learned. n = seeds kept.",
            compared, lambda s, m: _fmt_paired_seeds(learned.get((s, m))),
        )]
    else:
        lines += ["", f"(No paired differences: {baseline} is not in these results.)"]
    verdicts = [
        f"- {s}: {_fmt_paired(paired[(s, highlight)])} points over {paired[(s, highlight)].n_seeds} seeds "
        f"({paired[(s, highlight)].n_pairs} pairs): {paired[(s, highlight)].verdict()}; leave-one-seed-out: "
        f"{_fmt_without_seed(paired[(s, highlight)])}."
        for s in scenarios
        if (s, highlight) in paired and not math.isnan(paired[(s, highlight)].mean)
    ]
    if verdicts:
        lines += ["", f"Verdict per scenario ({highlight} vs {baseline}):", "", *verdicts]
    lines += ["", *method_table(
        "Validation Dice (%) (target-val cases; used to choose defaults, never the test cases).",
        methods, lambda s, m: _fmt(val.get((s, m))),
    )]
    return "\n".join(lines) + "\n"


def region_table(
    cases: Sequence[Mapping[str, Any]], comparisons: Sequence[tuple[str, str]], seed: int = 0
) -> str:
    """Per-region paired differences: for each ``(method, baseline)`` pair, ``Dice(method) - Dice(baseline)`` per
    scenario and region over (seed, case) pairs, with its 95% seed-bootstrap CI, leave-one-seed-out range and verdict.

    Negative transfer shows here as ``plain fine-tuning`` vs ``from scratch`` with the CI below 0 in some region.
    """
    scenarios = list(dict.fromkeys(c["scenario"] for c in cases))
    lines = [
        "| comparison | scenario | region | difference (points) seeds [95% seed-bootstrap CI] | leave one seed out | "
        "verdict |",
        "|---|---|---|---|---|---|",
    ]
    for method, baseline in comparisons:
        for scenario in scenarios:
            regions = list(dict.fromkeys(c["region"] for c in cases if c["scenario"] == scenario))
            for region in regions:
                stat = paired_case_statistics(
                    [c for c in cases if c["scenario"] == scenario], baseline, region=region, seed=seed
                ).get((scenario, method))
                if stat is not None and not math.isnan(stat.mean):
                    lines.append(f"| {method} - {baseline} | {scenario} | {region} | {_fmt_paired(stat)} | "
                                 f"{_fmt_without_seed(stat)} | {stat.verdict()} |")
    return "\n".join(lines) + "\n"


#: Safe transfer's second promise: a gain of at least this (Dice units) over plain fine-tuning, seed CI above 0 ...
SAFE_GAIN = 0.02
#: ... in at least this many scenarios (the goal the safe workflow is held to).
SAFE_GAIN_SCENARIOS = 3


def safe_transfer_table(
    rows: Sequence[Mapping[str, Any]],
    cases: Sequence[Mapping[str, Any]],
    safe: str,
    raced: str,
    plain: str,
    better: str,
    candidates: Sequence[str],
) -> str:
    """Markdown: how safe transfer (the candidate chosen on validation) kept its promises, per scenario.

    Args:
        rows: cell rows, with the derived ``safe`` / ``raced`` / ``better`` rows carrying ``chosen`` (the candidate
            picked) and ``cost`` (epochs trained over one full run's).
        cases: per-case test Dice of every row (pairs for the CIs).
        safe, raced, plain, better: method names of safe transfer, its raced variant, plain fine-tuning and the
            per-seed better of plain fine-tuning and scratch (by test Dice: an oracle).
        candidates: the candidates safe transfer chose among.

    The promises, each judged on the seed-bootstrap CI: (1) safe transfer is not significantly below the better of
    plain fine-tuning and scratch in any scenario (seed CI upper bound >= 0); (2) it gains at least
    :data:`SAFE_GAIN` over plain fine-tuning with the seed CI above 0 in at least :data:`SAFE_GAIN_SCENARIOS`
    scenarios. A leave-one-seed-out line per scenario shows how much one seed carries each difference.
    """
    scenarios = [s for s in dict.fromkeys(r["scenario"] for r in rows) if any(r["method"] == safe and r["scenario"] == s for r in rows)]
    to_plain = paired_case_statistics(cases, plain)
    to_better = paired_case_statistics(cases, better)
    to_safe = paired_case_statistics(cases, safe)
    lines = [
        "| scenario | seeds | chosen (" + ", ".join(candidates) + ") | chose the test-best candidate | "
        f"safe - {plain} | safe - {better} | promise 1 | raced - safe | raced cost (full runs) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    gains, holds, without_seed = [], [], []
    for scenario in scenarios:
        picked = [r for r in rows if r["scenario"] == scenario and r["method"] == safe]
        counts = "/".join(str(sum(r["chosen"] == c for r in picked)) for c in candidates)
        best_hits = 0
        for r in picked:
            tests = {c: float(x["test_dice"]) for x in rows for c in candidates
                     if x["scenario"] == scenario and int(x["seed"]) == int(r["seed"]) and x["method"] == c}
            best_hits += tests.get(r["chosen"], math.nan) >= max(tests.values()) if tests else 0
        plain_stat, better_stat = to_plain.get((scenario, safe)), to_better.get((scenario, safe))
        raced_stat = to_safe.get((scenario, raced))
        costs = [float(r["cost"]) for r in rows if r["scenario"] == scenario and r["method"] == raced]
        holds.append(better_stat is None or not better_stat.seed_high < 0)
        gains.append(plain_stat is not None and plain_stat.mean >= SAFE_GAIN and plain_stat.seed_low > 0)
        cost = f"{np.mean(costs):.2f}" if costs else "--"
        without_seed.append(f"- {scenario}: safe - {plain} {_fmt_without_seed(plain_stat)}; safe - {better} "
                            f"{_fmt_without_seed(better_stat)}; raced - safe {_fmt_without_seed(raced_stat)}.")
        lines.append(
            f"| {scenario} | {len(picked)} | {counts} | {best_hits}/{len(picked)} | {_fmt_paired(plain_stat)} | "
            f"{_fmt_paired(better_stat)} | {'holds' if holds[-1] else 'FAILS'} | {_fmt_paired(raced_stat)} | {cost} |"
        )
    n = len(scenarios)
    lines += [
        "",
        f"- Promise 1 (not significantly below the better of {plain} and scratch, seed CI): "
        f"{'holds' if all(holds) else 'fails'} in {sum(holds)} of {n} scenarios"
        + ("" if all(holds) else f" (fails in {', '.join(s for s, h in zip(scenarios, holds) if not h)})") + ".",
        f"- Promise 2 (at least {100 * SAFE_GAIN:.0f} points over {plain} with the seed CI above 0, in at least "
        f"{SAFE_GAIN_SCENARIOS} scenarios): {sum(gains)} of {n} scenarios "
        f"({', '.join(s for s, g in zip(scenarios, gains) if g) or 'none'}): "
        f"{'met' if sum(gains) >= SAFE_GAIN_SCENARIOS else 'not met'}.",
        "",
        "Leave one seed out: the range of each mean difference (points) when each seed in turn is left out, and the "
        "seed that moves it most with the part of the mean it carries (mean - mean without it).",
        "",
        *without_seed,
    ]
    return "\n".join(lines) + "\n"


def mean_dice_with_ci(
    cases: Sequence[Mapping[str, Any]], seed: int = 0
) -> dict[tuple[str, str], tuple[float, float, float]]:
    """``(scenario, method) -> (mean, low, high)`` test Dice over (seed, case) values (regions averaged per case),
    with a 95% seed-clustered bootstrap CI of the mean (whole seeds resampled, as in :class:`PairedStatistics`;
    with a single seed, the cases are resampled)."""
    per_case: dict[tuple[str, str, int, str], list[float]] = {}
    for c in cases:
        per_case.setdefault((c["scenario"], c["method"], int(c["seed"]), c["case_id"]), []).append(float(c["dice"]))
    groups: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for (scenario, method, run_seed, _), values in sorted(per_case.items()):
        groups.setdefault((scenario, method), []).append((run_seed, float(np.mean(values))))
    result = {}
    for key, pairs in groups.items():
        array, seeds = np.array([v for _, v in pairs]), np.array([s for s, _ in pairs])
        mean = float(array.mean())
        if array.size < 2 or np.all(array == array[0]):
            result[key] = (mean, mean, mean)
        elif np.unique(seeds).size >= 2:
            result[key] = (mean, *_seed_clustered_ci(array, seeds, seed))
        else:
            result[key] = (mean, *_bootstrap_ci(array, seed))
    return result


def plot_method_comparison(cases: Sequence[Mapping[str, Any]], methods: Sequence[str], out_png: Path) -> Path:
    """Grouped bars: test Dice per scenario (groups) and method (bars, in ``methods`` order), error bars the 95%
    seed-clustered bootstrap CI of the mean (see :func:`mean_dice_with_ci`)."""
    summary = mean_dice_with_ci(cases)
    scenarios = list(dict.fromkeys(s for s, _ in summary))
    methods = [m for m in methods if any((s, m) in summary for s in scenarios)]
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(scenarios))
    figure, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(scenarios) * max(1.0, len(methods) / 3)), 4.5))
    for i, method in enumerate(methods):
        mean, low, high = (np.array([100 * summary.get((s, method), (math.nan,) * 3)[k] for s in scenarios])
                           for k in range(3))
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, np.nan_to_num(mean), width,
               yerr=np.nan_to_num(np.stack([mean - low, high - mean])), capsize=3, label=method)
    ax.set_xticks(x, scenarios, rotation=15)
    ax.set_ylabel("test Dice (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("Target test Dice by scenario and method\n(mean over seeds x test cases, 95% CI with seeds resampled)",
                 fontsize=10)
    figure.tight_layout()
    atomic_write(out_png, lambda tmp: figure.savefig(tmp, format="png", dpi=120), suffix=".png")
    plt.close(figure)
    return Path(out_png)


def plot_few_shot_curve(
    cases: Sequence[Mapping[str, Any]], points: Mapping[int, str], methods: Sequence[str], out_png: Path
) -> Path:
    """Test Dice against the number of target training cases, one line per method with 95% CI bands.

    Args:
        cases: per-case test Dice rows (:func:`case_rows`).
        points: number of target training cases -> the scenario run with that many (same source and target).
        methods: methods to draw, in legend order.
        out_png: the PNG to write.
    """
    summary = mean_dice_with_ci(cases)
    sizes = sorted(n for n, scenario in points.items() if any(s == scenario for s, _ in summary))
    figure, ax = plt.subplots(figsize=(5.5, 4.0))
    for method in methods:
        values = [summary.get((points[n], method)) for n in sizes]
        if not any(values):
            continue
        xs = [n for n, v in zip(sizes, values) if v]
        mean, low, high = (np.array([100 * v[k] for v in values if v]) for k in range(3))
        ax.plot(xs, mean, marker="o", label=method)
        ax.fill_between(xs, low, high, alpha=0.2)
    ax.set_xticks(sizes)
    ax.set_xlabel("target training cases")
    ax.set_ylabel("test Dice (%)")
    ax.set_title("Few-shot curve\n(mean over seeds x test cases, 95% CI with seeds resampled)", fontsize=10)
    ax.legend(fontsize=8)
    figure.tight_layout()
    atomic_write(out_png, lambda tmp: figure.savefig(tmp, format="png", dpi=120), suffix=".png")
    plt.close(figure)
    return Path(out_png)


def plot_paired_differences(
    cases: Sequence[Mapping[str, Any]], methods: Sequence[str], baseline: str, out_png: Path
) -> Path:
    """Forest plot: each method's paired test-Dice difference to ``baseline`` with its 95% seed-bootstrap CI, per
    scenario; green / red only when the CI excludes 0."""
    paired = paired_case_statistics(cases, baseline)
    scenarios = list(dict.fromkeys(s for s, _ in paired))
    methods = [m for m in methods if any((s, m) in paired for s in scenarios)]
    figure, axes = plt.subplots(1, max(1, len(scenarios)), figsize=(4.2 * max(1, len(scenarios)), 0.5 * len(methods) + 1.8),
                                sharey=True, squeeze=False)
    for ax, scenario in zip(axes[0], scenarios):
        for y, method in enumerate(methods):
            stat = paired.get((scenario, method))
            if stat is None or math.isnan(stat.mean):
                continue
            verdict = stat.verdict()
            colour = "#1a9850" if verdict.startswith("gain (") else "#d73027" if verdict.startswith("loss (") else "#4d4d4d"
            error = ([[100 * (stat.mean - stat.seed_low)], [100 * (stat.seed_high - stat.mean)]]
                     if stat.n_seeds >= 2 else None)
            ax.errorbar(100 * stat.mean, y, xerr=error, fmt="o", color=colour, capsize=3)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(scenario, fontsize=9)
        ax.set_xlabel("Dice difference (points)")
    axes[0][0].set_yticks(range(len(methods)), methods, fontsize=8)
    axes[0][0].invert_yaxis()
    figure.suptitle(f"Paired test-Dice difference to {baseline}:\n95% seed-bootstrap CI (whole seeds resampled)",
                    fontsize=10)
    figure.tight_layout()
    atomic_write(out_png, lambda tmp: figure.savefig(tmp, format="png", dpi=120), suffix=".png")
    plt.close(figure)
    return Path(out_png)


def plot_runs_against_baseline(
    rows: Sequence[Mapping[str, Any]], method: str, baseline: str, out_png: Path, threshold: float = STALLED_DICE
) -> Path:
    """One point per seed and scenario: the ``baseline`` run's test Dice (x) against ``method``'s (y), both mean
    over regions. Points above the diagonal are seeds where ``method`` did better; hollow markers are seeds where
    either run did not learn a region (:func:`stalled_runs`)."""
    runs = {(r["scenario"], r["method"], int(r["seed"])): r for r in rows}
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    figure, ax = plt.subplots(figsize=(6.5, 6))
    for index, scenario in enumerate(scenarios):
        seeds = sorted(k for s, m, k in runs if s == scenario and m == method and (s, baseline, k) in runs)
        if not seeds:
            continue
        pairs = [(runs[(scenario, baseline, k)], runs[(scenario, method, k)]) for k in seeds]
        stalled = np.array([_stalled(b, threshold) or _stalled(m, threshold) for b, m in pairs])
        x = 100 * np.array([float(b["test_dice"]) for b, _ in pairs])
        y = 100 * np.array([float(m["test_dice"]) for _, m in pairs])
        colour = plt.cm.tab10(index % 10)
        ax.scatter(x[~stalled], y[~stalled], color=colour, label=scenario, s=28)
        ax.scatter(x[stalled], y[stalled], facecolors="none", edgecolors=colour, s=40)
    ax.plot([0, 100], [0, 100], color="black", linewidth=0.8)
    ax.set_xlim(-2, 100)
    ax.set_ylim(-2, 100)
    ax.set_xlabel(f"{baseline}: test Dice (%)")
    ax.set_ylabel(f"{method}: test Dice (%)")
    ax.set_title(f"One point per seed (hollow: either run did not learn a region, Dice < {100 * threshold:.0f}%)",
                 fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    atomic_write(out_png, lambda tmp: figure.savefig(tmp, format="png", dpi=120), suffix=".png")
    plt.close(figure)
    return Path(out_png)
