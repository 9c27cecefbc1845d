"""The hypotheses of the second pre-registered study (``docs/results/confirm2/README.md``), judged from a report.

One report is one fine-tuning length (the ``confirm2_40`` or the ``confirm2_160`` profile); the hypotheses are judged
on each. The method under test is safe transfer with ensembles (``safe_ensemble``); every comparison is its paired
test-Dice difference over (seed, test case) with the seed-bootstrap 95% CI
(:func:`~transrisk_components.reporting.results.paired_case_statistics`), per scenario:

- **H1** (never below the best single start): against the per-seed best single candidate on test (an oracle), the
  seed CI's lower bound is at least :data:`H1_MARGIN` below 0 (-0.5 points) in every scenario;
- **H2** (more than three tries): against both equal-compute controls (plain x3 and risk map x3 restarts, each chosen
  on validation by the same rule), the seed CI lies above 0 in at least :data:`H2_SCENARIOS` of the six scenarios;
- **H3** (never significantly below the better of plain fine-tuning and scratch): against that per-seed test oracle,
  the seed CI's upper bound is at least 0 in every scenario.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transrisk_components.experiments.catalogue import (
    BEST_CANDIDATE,
    BETTER_OF_PLAIN_AND_SCRATCH,
    PLAIN_RESTARTS,
    RISK_RESTARTS,
    SAFE_ENSEMBLE,
)
from transrisk_components.reporting.results import PairedStatistics, paired_case_statistics

__all__ = ["H1_MARGIN", "H2_SCENARIOS", "HYPOTHESIS_METHODS", "REGISTERED_FILES", "Hypothesis", "judge_hypotheses", "hypotheses_markdown"]

#: H1's tolerance below the best single candidate, in Dice (0.5 points).
H1_MARGIN = 0.005
#: H2 holds in at least this many scenarios.
H2_SCENARIOS = 4
#: The files that define the rule and its analysis: a run is valid for the study only where they are unchanged from
#: the registration commit (:data:`~transrisk_components.experiments.profiles.CONFIRM2_REGISTRATION`; each
#: ``machine.md`` says).
REGISTERED_FILES = (
    "transrisk_components/bundle/workflow/selection.py",
    "transrisk_components/bundle/workflow/ensembles.py",
    "transrisk_components/bundle/engine/ensemble.py",
    "transrisk_components/experiments/safe.py",
    "transrisk_components/experiments/ensembles.py",
    "transrisk_components/experiments/hypotheses.py",
    "transrisk_components/reporting/results.py",
)
#: The methods a report needs for the hypotheses to be judged (a report of the ``confirm2_*`` profiles has them).
HYPOTHESIS_METHODS = frozenset({SAFE_ENSEMBLE, BEST_CANDIDATE, PLAIN_RESTARTS, RISK_RESTARTS, BETTER_OF_PLAIN_AND_SCRATCH})


@dataclass(frozen=True)
class Hypothesis:
    """One hypothesis judged on one report.

    Attributes:
        name: ``H1``, ``H2`` or ``H3``.
        statement: what it claims.
        held: whether it held.
        evidence: per scenario, the comparison(s) with their seed CIs and leave-one-seed-out ranges.
    """

    name: str
    statement: str
    held: bool
    evidence: tuple[str, ...]


def _text(stat: PairedStatistics) -> str:
    low, high = 100 * stat.seed_low, 100 * stat.seed_high
    without = [value for _, value in stat.without_seed]
    seed, carried = stat.carried_most
    return (f"{100 * stat.mean:+.1f} seeds [{low:+.1f}, {high:+.1f}], leave-one-seed-out {100 * min(without):+.1f} .. "
            f"{100 * max(without):+.1f} (seed {seed} carries {100 * carried:+.1f})")


def judge_hypotheses(cases: Iterable[Mapping[str, Any]], seed: int = 0) -> list[Hypothesis]:
    """H1-H3 (module docstring) on the per-case test Dice of one report (rows of ``results_per_case.csv``, method
    ids).

    Raises:
        ValueError: the report lacks a method the hypotheses compare, in some scenario (names them).
    """
    cases = list(cases)
    scenarios = sorted({c["scenario"] for c in cases})
    against = {name: paired_case_statistics(cases, name, seed=seed)
               for name in (BEST_CANDIDATE, PLAIN_RESTARTS, RISK_RESTARTS, BETTER_OF_PLAIN_AND_SCRATCH)}
    missing = [f"{s}: {SAFE_ENSEMBLE} - {name}" for s in scenarios for name, stats in against.items() if (s, SAFE_ENSEMBLE) not in stats]
    if missing:
        raise ValueError(f"the report lacks comparisons the hypotheses need: {missing}")

    def stat(scenario: str, baseline: str) -> PairedStatistics:
        return against[baseline][(scenario, SAFE_ENSEMBLE)]

    h1 = [stat(s, BEST_CANDIDATE).seed_low >= -H1_MARGIN for s in scenarios]
    h2 = [stat(s, PLAIN_RESTARTS).seed_low > 0 and stat(s, RISK_RESTARTS).seed_low > 0 for s in scenarios]
    h3 = [stat(s, BETTER_OF_PLAIN_AND_SCRATCH).seed_high >= 0 for s in scenarios]
    return [
        Hypothesis("H1", f"safe transfer with ensembles - best single candidate (test oracle): seed CI lower bound >= "
                   f"{-100 * H1_MARGIN:+.1f} points in every scenario", all(h1),
                   tuple(f"{s}: {_text(stat(s, BEST_CANDIDATE))}" for s in scenarios)),
        Hypothesis("H2", f"safe transfer with ensembles beats plain x3 and risk map x3 (seed CI above 0) in at least "
                   f"{H2_SCENARIOS} of {len(scenarios)} scenarios (held in {sum(h2)})", sum(h2) >= H2_SCENARIOS,
                   tuple(f"{s}: - plain x3 {_text(stat(s, PLAIN_RESTARTS))}; - risk map x3 {_text(stat(s, RISK_RESTARTS))}"
                         for s in scenarios)),
        Hypothesis("H3", "safe transfer with ensembles - better of plain and scratch (test oracle): seed CI upper bound "
                   ">= 0 in every scenario", all(h3),
                   tuple(f"{s}: {_text(stat(s, BETTER_OF_PLAIN_AND_SCRATCH))}" for s in scenarios)),
    ]


def hypotheses_markdown(hypotheses: Sequence[Hypothesis]) -> str:
    """The verdicts as a markdown section: each hypothesis held or failed, with its evidence per scenario."""
    lines = ["## Pre-registered hypotheses (docs/results/confirm2/README.md)", ""]
    for hypothesis in hypotheses:
        lines.append(f"- **{hypothesis.name} {'held' if hypothesis.held else 'failed'}**: {hypothesis.statement}")
        lines += [f"  - {item}" for item in hypothesis.evidence]
    return "\n".join(lines) + "\n"
