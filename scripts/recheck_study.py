"""Recheck a confirm2 report from its per-case CSVs alone, with code that shares nothing with the package.

Replays every choice of the registered rule from ``validation_per_case.csv`` (score = mean over regions of the mean
validation Dice over the cases; the highest wins; within 0.5 points the one listed first), checks that each derived
method's rows in ``results_per_case.csv`` are those of the method the replay chose (safe transfer, with ensembles,
with the composite, the two equal-compute controls, the two test oracles), and recomputes the hypothesis lines of
``table.md`` (H1-H3: ``safe_ensemble`` minus the oracles and controls, paired over (seed, test case)) with a seed
bootstrap of its own (numpy, another random stream). Means must match ``table.md`` to its 0.1 points; the CIs are
printed beside the table's (the resamples differ, so they agree only to about 0.1-0.3 points).

    python scripts/recheck_study.py docs/results/confirm2/epochs40/part_fets_ed_to_et

The last line is ``recheck: N choices replayed, M mismatches``; the exit status is 1 when M > 0.
"""

from __future__ import annotations

import csv
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

TIE_MARGIN = 0.005
CANDIDATES = ("risk", "plain", "scratch")
ENSEMBLES = ("ensemble_top2", "ensemble_all")
CHOICES = {  # derived method -> the methods it chooses among, in tie order (the registered rule)
    "safe": CANDIDATES,
    "safe_ensemble": CANDIDATES + ENSEMBLES,
    "safe_composite": CANDIDATES + ENSEMBLES + ("composite_regions",),
    "plain_x3": ("plain", "plain_r1", "plain_r2"),
    "risk_x3": ("risk", "risk_r1", "risk_r2"),
}
OPTIONAL = frozenset({"composite_regions"})  # made only where the best candidate differs between regions
ORACLES = {"best_candidate": CANDIDATES, "better_of_plain_scratch": ("plain", "scratch")}
COMPARED = ("best_candidate", "plain_x3", "risk_x3", "better_of_plain_scratch")

# (scenario, method, seed) -> case -> region -> Dice
PerCase = dict[tuple[str, str, int], dict[str, dict[str, float]]]


def read_per_case(path: Path) -> PerCase:
    """Read a ``*_per_case.csv`` (columns scenario, method, seed, case_id, region, dice)."""
    table: PerCase = defaultdict(lambda: defaultdict(dict))
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            table[row["scenario"], row["method"], int(row["seed"])][row["case_id"]][row["region"]] = float(row["dice"])
    return {key: dict(cases) for key, cases in table.items()}


def score(cases: dict[str, dict[str, float]]) -> float:
    """Mean over regions of the region's mean Dice over the cases."""
    regions = sorted({r for case in cases.values() for r in case})
    return float(np.mean([np.mean([cases[c][r] for c in cases]) for r in regions]))


def case_means(cases: dict[str, dict[str, float]]) -> dict[str, float]:
    """Case -> mean Dice over its regions."""
    return {case: float(np.mean(list(regions.values()))) for case, regions in cases.items()}


def replay(options: dict[str, float]) -> str:
    """The first listed option within the tie margin of the highest score."""
    best = max(options.values())
    return next(name for name, value in options.items() if value >= best - TIE_MARGIN)


def seed_bootstrap(per_seed: dict[int, list[float]], resamples: int = 9999) -> tuple[float, float, float]:
    """Mean paired difference over all (seed, case) pairs and its 95% percentile CI with whole seeds resampled."""
    seeds = sorted(per_seed)
    sums = np.array([sum(per_seed[s]) for s in seeds])
    counts = np.array([len(per_seed[s]) for s in seeds])
    picks = np.random.default_rng(12345).integers(0, len(seeds), size=(resamples, len(seeds)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(sums.sum() / counts.sum()), float(low), float(high)


def table_lines(table_md: Path) -> dict[tuple[str, str], tuple[float, float, float]]:
    """(scenario, compared method) -> (mean, low, high) from the H1-H3 lines of ``table.md``, in points."""
    number = r"([+-]\d+\.\d) seeds \[([+-]\d+\.\d), ([+-]\d+\.\d)\]"
    found = {}
    text = table_md.read_text()
    for scenario, body in re.findall(r"^  - (\w+): (.*)$", text, flags=re.M):
        h2 = re.findall(r"- (plain|risk map) x3 " + number, body)
        for label, mean, low, high in h2:
            found[scenario, "plain_x3" if label == "plain" else "risk_x3"] = (float(mean), float(low), float(high))
        if not h2:
            single = re.match(number, body)
            if single:
                key = "best_candidate" if (scenario, "best_candidate") not in found else "better_of_plain_scratch"
                found[scenario, key] = tuple(float(v) for v in single.groups())
    return found


def main(report_dir: str) -> int:
    """Recheck the report in ``report_dir``, print one line per comparison and the summary line; 1 on a mismatch."""
    folder = Path(report_dir)
    validation = read_per_case(folder / "validation_per_case.csv")
    test = read_per_case(folder / "results_per_case.csv")
    reported = table_lines(folder / "table.md")
    pairs = sorted({(scenario, seed) for scenario, _, seed in test})
    replayed, mismatches = 0, []
    differences: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(dict)
    for scenario, seed in pairs:
        chosen = {}
        for derived, among in CHOICES.items():
            if (scenario, derived, seed) not in test:
                continue
            present = [m for m in among if (scenario, m, seed) in validation]
            absent = [m for m in among if m not in present and m not in OPTIONAL]
            if absent:
                mismatches.append(f"{scenario} seed {seed}: no validation Dice of {absent}, which {derived} chooses among")
            if not present:
                continue
            chosen[derived] = replay({m: score(validation[scenario, m, seed]) for m in present})
        for oracle, among in ORACLES.items():
            absent = [m for m in (oracle, *among) if (scenario, m, seed) not in test]
            if absent:
                mismatches.append(f"{scenario} seed {seed}: no test Dice of {absent}, which the {oracle} oracle needs")
                continue
            chosen[oracle] = max(among, key=lambda m: score(test[scenario, m, seed]))
        for derived, method in chosen.items():
            replayed += 1
            if (scenario, method, seed) not in test:
                mismatches.append(f"{scenario} seed {seed}: {derived} chose {method}, which has no test Dice")
            elif test[scenario, derived, seed] != test[scenario, method, seed]:
                mismatches.append(f"{scenario} seed {seed}: {derived} is not its replayed choice {method}")
        absent = [m for m in ("safe_ensemble", *COMPARED) if (scenario, m, seed) not in test]
        if absent:
            mismatches.append(f"{scenario} seed {seed}: no test Dice of {absent}, which the hypotheses compare")
            continue
        safe = case_means(test[scenario, "safe_ensemble", seed])
        for other in COMPARED:
            values = case_means(test[scenario, other, seed])
            differences[scenario, other][seed] = [100 * (safe[c] - values[c]) for c in sorted(safe)]
    for (scenario, other), per_seed in sorted(differences.items()):
        mean, low, high = seed_bootstrap(per_seed)
        line = f"{scenario}: safe_ensemble - {other} {mean:+.1f} [{low:+.1f}, {high:+.1f}] over {len(per_seed)} seeds"
        if (scenario, other) in reported:
            t_mean, t_low, t_high = reported[scenario, other]
            line += f"; table.md {t_mean:+.1f} [{t_low:+.1f}, {t_high:+.1f}]"
            if abs(round(mean, 1) - t_mean) > 0.051:
                mismatches.append(f"{scenario}: safe_ensemble - {other} mean {mean:+.2f}, table.md says {t_mean:+.1f}")
        else:
            mismatches.append(f"{scenario}: table.md has no line for safe_ensemble - {other}")
        print(line)
    for mismatch in mismatches:
        print(f"MISMATCH {mismatch}")
    print(f"recheck: {replayed} choices replayed, {len(mismatches)} mismatches")
    return 1 if mismatches else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/recheck_study.py REPORT_DIR")
    sys.exit(main(sys.argv[1]))
