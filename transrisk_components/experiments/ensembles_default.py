"""The registered decision whether ``safe#ensembles`` becomes the bundles' default.

Fixed with the second study's hypotheses (``docs/results/confirm2/README.md``, registration commit 4c2a167):
ensembles are **on by default only if H1 holds at both training lengths and ``safe_ensemble - safe`` has a seed-CI
lower bound of at least 0 in every scenario at both lengths**; otherwise they stay off. H1 is judged by
:func:`~transrisk_components.experiments.hypotheses.judge_hypotheses`; ``safe_ensemble - safe`` is the paired
test-Dice difference over (seed, test case) with the same seed-bootstrap CI
(:func:`~transrisk_components.reporting.results.paired_case_statistics`). Where validation never keeps an
ensemble in a scenario the difference is 0 for every pair, which passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transrisk_components.experiments.catalogue import SAFE, SAFE_ENSEMBLE
from transrisk_components.experiments.hypotheses import judge_hypotheses
from transrisk_components.reporting.results import paired_case_statistics

__all__ = ["EnsemblesDefault", "ensembles_default"]


@dataclass(frozen=True)
class EnsemblesDefault:
    """The decision and what it rests on.

    Attributes:
        adopt: whether ``safe#ensembles`` becomes the default.
        evidence: one line per training length: H1's verdict and each scenario's ``safe_ensemble - safe``.
    """

    adopt: bool
    evidence: tuple[str, ...]


def ensembles_default(reports: Mapping[str, Sequence[Mapping[str, Any]]], seed: int = 0) -> EnsemblesDefault:
    """Decide by the registered rule (module docstring).

    Args:
        reports: training length (e.g. ``"40 epochs"``) -> the per-case rows of that length's report
            (``results_per_case.csv``, method ids); both lengths of the study.
        seed: seed of the bootstrap resampling.

    Raises:
        ValueError: fewer than two lengths, or a report without the rows the rule compares (names them).
    """
    if len(reports) < 2:
        raise ValueError(f"the decision needs the reports of both training lengths, got {list(reports)}")
    adopt, evidence = True, []
    for length, cases in reports.items():
        cases = list(cases)
        h1 = judge_hypotheses(cases, seed=seed)[0]
        against_safe = paired_case_statistics(cases, SAFE, seed=seed)
        scenarios = sorted({c["scenario"] for c in cases})
        missing = [s for s in scenarios if (s, SAFE_ENSEMBLE) not in against_safe]
        if missing:
            raise ValueError(f"{length}: no {SAFE_ENSEMBLE} - {SAFE} pairs in {missing}")
        lows = {s: against_safe[(s, SAFE_ENSEMBLE)].seed_low for s in scenarios}
        adopt = adopt and h1.held and all(low >= 0 for low in lows.values())
        differences = ", ".join(
            f"{s} {100 * against_safe[(s, SAFE_ENSEMBLE)].mean:+.1f} [{100 * low:+.1f}, "
            f"{100 * against_safe[(s, SAFE_ENSEMBLE)].seed_high:+.1f}]" for s, low in lows.items())
        evidence.append(f"{length}: H1 {'held' if h1.held else 'failed'}; {SAFE_ENSEMBLE} - {SAFE} (points, seed CI): "
                        f"{differences}")
    return EnsemblesDefault(adopt, tuple(evidence))
