"""How many validation cases the safe-transfer choice needs, from the committed confirmatory study's case-level spread.

Usage (from the repository root)::

    python scripts/validation_size.py [--results docs/results/confirm/all/validation_per_case.csv] [--resolve 5] \
        [--out docs/results/confirm/all/validation_size.md]

For every scenario and seed of the study, each pair of candidates gives a per-case difference of their validation
scores (the mean Dice over the regions, the selection rule's step 1); the standard deviation of that difference over
the cases is what a choice on ``n`` cases must see through: the 95% interval of a paired mean difference is about
``+-1.96 * sd / sqrt(n)``. The script prints each scenario's median SD, the median over the scenarios (the figure the
bundle uses, ``CASE_DIFFERENCE_SD`` in ``transrisk_components/bundle/workflow/selection.py``) and the number of cases
at which a difference of ``--resolve`` points is told apart (``MIN_VALIDATION_CASES``). Its last line:
``validation size: case-level SD = <sd> points, cases to resolve <r> points = <n>``. With ``--out`` the same lines go
to a Markdown file as well (the committed ``docs/results/confirm/all/validation_size.md``).
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
from pathlib import Path

import pandas as pd

from transrisk_components.utils.io import atomic_write_text

Z_95 = 1.96


def case_difference_sds(per_case: pd.DataFrame) -> pd.DataFrame:
    """One row per (scenario, seed, candidate pair): the SD over cases of the paired case-score difference.

    Args:
        per_case: columns ``scenario, method, seed, case_id, region, dice`` (Dice in [0, 1]).
    """
    scores = per_case.groupby(["scenario", "method", "seed", "case_id"]).dice.mean().reset_index()
    rows = []
    for (scenario, seed), group in scores.groupby(["scenario", "seed"]):
        table = group.pivot(index="case_id", columns="method", values="dice")
        for first, second in itertools.combinations(table.columns, 2):
            difference = (table[first] - table[second]).dropna()
            if len(difference) > 1:
                rows.append({"scenario": scenario, "seed": seed, "pair": f"{first} - {second}",
                             "sd": float(difference.std(ddof=1)), "cases": len(difference)})
    return pd.DataFrame(rows)


def cases_to_resolve(sd: float, resolve: float) -> int:
    """The fewest cases whose 95% interval half-width ``Z_95 * sd / sqrt(n)`` is at most ``resolve`` (same units)."""
    return max(2, math.ceil((Z_95 * sd / resolve) ** 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("docs/results/confirm/all/validation_per_case.csv"))
    parser.add_argument("--resolve", type=float, default=5.0, help="difference to tell apart, Dice points")
    parser.add_argument("--out", type=Path, default=None, help="also write the lines to this Markdown file")
    args = parser.parse_args()
    sds = case_difference_sds(pd.read_csv(args.results))
    per_scenario = sds.groupby("scenario").sd.median()
    lines = []
    for scenario, sd in per_scenario.items():
        cases = int(sds[sds.scenario == scenario].cases.median())
        lines.append(f"{scenario}: median case-level SD of a paired difference {100 * sd:.2f} points "
                     f"({len(sds[sds.scenario == scenario])} pairs x seeds, {cases} validation cases each)")
    sd = statistics.median(per_scenario.tolist())
    lines.append(f"validation size: case-level SD = {100 * sd:.2f} points, "
                 f"cases to resolve {args.resolve:g} points = {cases_to_resolve(100 * sd, args.resolve)}")
    print("\n".join(lines))
    if args.out is not None:
        command = f"python scripts/validation_size.py --results {args.results} --resolve {args.resolve:g} --out {args.out}"
        atomic_write_text(args.out, "# Validation size (generated, do not edit by hand)\n\n"
                          f"`{command}`\n\n" + "".join(f"- {line}\n" for line in lines))


if __name__ == "__main__":
    main()
