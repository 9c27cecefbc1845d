"""The safe-transfer selection rule: which candidate fine-tuning run becomes the bundle's model.

Both the bundles' safe transfer (:mod:`transrisk_components.bundle.workflow.pipeline`) and the experiment grid
(:mod:`transrisk_components.experiments.safe`) call :func:`choose_candidate` and :func:`race`, so that the grid never
picks by another rule than the product does. Only validation cases are read; test cases never enter a choice.

**The rule** (fixed in code before the confirmatory study ``confirm`` ran; ``docs/results/confirm`` names the
commit):

1. A candidate's score is the mean over the regions the bundle reports (FeTS: ET, TC, WT; iSeg: CSF, GM, WM; a
   binary task: its own region) of its mean Dice over the validation cases, for its best checkpoint.
2. The highest score wins. Candidates within :data:`TIE_MARGIN` of it are tied, and the tie goes to the one listed
   first (the bundles list the risk-weighted default, then plain fine-tuning, then training from scratch: the
   documented default wins a tie).
3. A region whose mean validation Dice is below :data:`STALL_DICE` is *stalled* for that candidate (it never
   learnt it). Stalls are reported beside the choice; they act only through the score, and in :func:`race`.

**Racing** (successive halving, :func:`race`): every candidate trains to the first rung; at each rung the
candidates whose best validation score so far is more than :data:`RACE_MARGIN` below the leader's are dropped,
except a candidate that is the only one to have learnt some region (not stalled where all others are). The
survivors train on to the next rung; after the last rung the rule above chooses among the candidates that
finished.

Validation Dice of four cases is noisy: two candidates 5 points apart are often not told apart. The rule does not
hide that: :func:`choose_candidate` returns each candidate's paired difference to the chosen one with a bootstrap
CI over the validation cases (:attr:`CandidateScore.difference_ci`; none from a single case), and a choice on fewer
than :data:`MIN_VALIDATION_CASES` cases is marked uncertain (:attr:`Selection.uncertain`), with the difference the
cases can resolve (:attr:`Selection.resolvable`). Both figures come from the confirmatory study's case-level spread
(``python scripts/validation_size.py``): the median over its scenarios of the SD over cases of a paired difference
between two candidates is :data:`CASE_DIFFERENCE_SD`; ``1.96 * sd / sqrt(n)`` falls to 5 points at 5 cases.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

__all__ = [
    "RACE_MARGIN",
    "STALL_DICE",
    "TIE_MARGIN",
    "CASE_DIFFERENCE_SD",
    "MIN_VALIDATION_CASES",
    "CaseDice",
    "CandidateScore",
    "RaceOutcome",
    "Selection",
    "ValidationDice",
    "choose_candidate",
    "race",
    "rung_epochs",
    "score_of",
]

#: Two candidates whose scores (mean validation Dice, 0-1) differ by less than this are tied.
TIE_MARGIN = 0.005
#: A region with a mean validation Dice below this is stalled: the run never learnt it (the reports' 5% cut).
STALL_DICE = 0.05
#: At a racing rung, a candidate more than this below the leader's best score so far is dropped.
RACE_MARGIN = 0.10

#: The SD over validation cases of the per-case score difference of two candidates (Dice, 0-1): the median over the
#: confirmatory study's scenarios (``python scripts/validation_size.py``: 5.47 points).
CASE_DIFFERENCE_SD = 0.0547
#: Below this many validation cases the choice is marked uncertain: ``1.96 * CASE_DIFFERENCE_SD / sqrt(n)`` is above
#: 5 points of Dice (``python scripts/validation_size.py``).
MIN_VALIDATION_CASES = 5

#: case id -> region -> Dice in [0, 1]
CaseDice = Mapping[str, Mapping[str, float]]
#: candidate -> case id -> region -> Dice in [0, 1]
ValidationDice = Mapping[str, CaseDice]


def _region_means(per_case: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Region -> mean Dice over the cases (NaN values skipped; NaN when a region has no finite value)."""
    regions: dict[str, list[float]] = {}
    for case_regions in per_case.values():
        for region, dice in case_regions.items():
            regions.setdefault(region, []).append(float(dice))
    return {r: float(np.nanmean(v)) if np.isfinite(v).any() else math.nan for r, v in regions.items()}


def score_of(region_means: Mapping[str, float]) -> float:
    """Rule step 1: the mean over regions of the per-region mean validation Dice (NaN regions skipped)."""
    finite = [v for v in region_means.values() if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _case_scores(per_case: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Case id -> mean Dice over the case's regions."""
    return {case: score_of(regions) for case, regions in per_case.items()}


def _bootstrap_mean_ci(values: np.ndarray, seed: int = 0, resamples: int = 9999) -> tuple[float, float]:
    """95% percentile-bootstrap CI of the mean of ``values``; ``(nan, nan)`` from fewer than two values (one case has
    no spread to estimate)."""
    if values.size < 2:
        return math.nan, math.nan
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


@dataclass(frozen=True)
class CandidateScore:
    """One candidate's validation result under the rule.

    Attributes:
        name: the candidate's name.
        score: rule step 1, in [0, 1].
        regions: region -> mean validation Dice.
        score_ci: 95% bootstrap CI over validation cases of the score (NaN from one case).
        stalled: regions with a mean validation Dice below :data:`STALL_DICE`.
        difference: score minus the chosen candidate's score (0 for the chosen one).
        difference_ci: 95% bootstrap CI over the validation cases of the paired per-case difference to the chosen
            candidate (cases both were validated on; NaN from one case).
    """

    name: str
    score: float
    regions: dict[str, float]
    score_ci: tuple[float, float]
    stalled: tuple[str, ...]
    difference: float = 0.0
    difference_ci: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class Selection:
    """The outcome of :func:`choose_candidate`: the chosen candidate, why, and every candidate's scores.

    Attributes:
        chosen: the chosen candidate's name.
        tied: the candidates within :data:`TIE_MARGIN` of the best score, in candidate order.
        candidates: every candidate's scores, in candidate order.
        reason: the choice in one sentence, with the uncertainty warning when there is one.
        cases: the number of validation cases the choice rests on (the chosen candidate's).
        k_fold: whether the cases were scored by k-fold choice (every labelled case already validates).
    """

    chosen: str
    tied: tuple[str, ...]
    candidates: tuple[CandidateScore, ...]
    reason: str
    cases: int = 0
    k_fold: bool = False

    @property
    def uncertain(self) -> bool:
        """Whether the choice rests on fewer than :data:`MIN_VALIDATION_CASES` validation cases."""
        return self.cases < MIN_VALIDATION_CASES

    @property
    def resolvable(self) -> float:
        """The score difference (Dice, 0-1) the validation cases can tell apart: the 95% half-width
        ``1.96 * CASE_DIFFERENCE_SD / sqrt(cases)``."""
        return 1.96 * CASE_DIFFERENCE_SD / math.sqrt(self.cases) if self.cases else math.inf

    @property
    def warning(self) -> str:
        """One sentence on how uncertain the choice is; empty when the cases suffice."""
        if not self.uncertain:
            return ""
        remedy = ("label more target cases" if self.k_fold else "add validation cases (num_target_val), or score the "
                  "candidates on every labelled case by k-fold choice (safe#folds),")
        return (f"uncertain: {self.cases} validation case{'s' if self.cases != 1 else ''} (fewer than "
                f"{MIN_VALIDATION_CASES}) cannot tell apart candidates within about {100 * self.resolvable:.0f} points "
                f"of Dice; {remedy} to make the choice firm")

    def candidate(self, name: str) -> CandidateScore:
        """The :class:`CandidateScore` of ``name``."""
        return next(c for c in self.candidates if c.name == name)


def choose_candidate(validation: ValidationDice, seed: int = 0, k_fold: bool = False) -> Selection:
    """Apply the rule (module docstring) to the candidates' per-case, per-region validation Dice.

    Args:
        validation: candidate -> case id -> region -> Dice, in candidate order (the tie order). Every candidate
            must have at least one validation case.
        seed: seed of the bootstrap CIs (same seed, same intervals).
        k_fold: the cases were scored by k-fold choice (each by the run that held out its fold).

    Raises:
        ValueError: no candidate, a candidate without validation cases, or candidates validated on different
            regions.
    """
    if not validation:
        raise ValueError("choose_candidate needs at least one candidate")
    empty = [name for name, cases in validation.items() if not cases]
    if empty:
        raise ValueError(f"candidate(s) {empty} have no validation Dice: validate them before choosing")
    region_sets = {name: tuple(sorted({r for case in cases.values() for r in case})) for name, cases in validation.items()}
    if len(set(region_sets.values())) > 1:
        raise ValueError(f"candidates were validated on different regions: {region_sets}")
    means = {name: _region_means(cases) for name, cases in validation.items()}
    scores = {name: score_of(regions) for name, regions in means.items()}
    finite = [s for s in scores.values() if not math.isnan(s)]
    best = max(finite) if finite else math.nan
    tied = tuple(n for n, s in scores.items() if not math.isnan(s) and s >= best - TIE_MARGIN)
    chosen = tied[0] if tied else next(iter(validation))
    chosen_cases = _case_scores(validation[chosen])
    results = []
    for name, cases in validation.items():
        case_scores = _case_scores(cases)
        common = [c for c in case_scores if c in chosen_cases]
        differences = np.array([case_scores[c] - chosen_cases[c] for c in common], dtype=float)
        results.append(CandidateScore(
            name=name,
            score=scores[name],
            regions=means[name],
            score_ci=_bootstrap_mean_ci(np.array(list(case_scores.values()), dtype=float), seed),
            stalled=tuple(r for r, v in means[name].items() if not math.isnan(v) and v < STALL_DICE),
            difference=scores[name] - scores[chosen],
            difference_ci=_bootstrap_mean_ci(differences, seed) if name != chosen else (0.0, 0.0),
        ))
    if len(tied) > 1:
        reason = (f"{chosen}: highest validation score {100 * best:.1f}, tied within {100 * TIE_MARGIN:.1f} points "
                  f"with {', '.join(t for t in tied if t != chosen)}; the tie goes to the one listed first")
    else:
        reason = f"{chosen}: highest validation score {100 * scores[chosen]:.1f}"
    selection = Selection(chosen=chosen, tied=tied, candidates=tuple(results), reason=reason, cases=len(chosen_cases),
                          k_fold=k_fold)
    if selection.warning:
        return replace(selection, reason=f"{reason}; {selection.warning}")
    return selection


@dataclass(frozen=True)
class RaceOutcome:
    """Which candidates :func:`race` let finish, and what the race cost.

    Attributes:
        finished: the candidates trained to the last rung, in candidate order.
        dropped: candidate -> the rung (epoch) at which it was dropped.
        epochs: candidate -> epochs it trained.
        cost: total epochs trained over the epochs of one full run (``len(candidates)`` without racing).
    """

    finished: tuple[str, ...]
    dropped: dict[str, int] = field(default_factory=dict)
    epochs: dict[str, int] = field(default_factory=dict)
    cost: float = math.nan


def rung_epochs(fractions: Sequence[float], max_epochs: int, val_interval: int) -> tuple[int, ...]:
    """The racing rungs as epochs: each fraction of ``max_epochs`` rounded up to the next validation epoch (a
    multiple of ``val_interval``), keeping those below ``max_epochs``, without repeats.

    Example: fractions ``(0.25, 0.5)`` of 40 epochs validated every 10 give rungs ``(10, 20)``.
    """
    epochs = (val_interval * math.ceil(f * max_epochs / val_interval) for f in fractions)
    return tuple(sorted({e for e in epochs if 0 < e < max_epochs}))


def race(
    curves: Mapping[str, Mapping[int, Mapping[str, float]]], rungs: Sequence[int], max_epochs: int
) -> RaceOutcome:
    """Successive halving over the candidates' validation curves (module docstring, "Racing").

    Args:
        curves: candidate -> validation epoch -> region -> mean validation Dice at that epoch (the learning curve),
            in candidate order. At a rung only the epochs up to it are read, so the same function decides a live
            race (curves that stop at the rung) and replays a finished one.
        rungs: epochs at which candidates may be dropped, ascending, each below ``max_epochs``; each must be a
            validation epoch of every candidate still running.
        max_epochs: the length of a full run.

    Raises:
        ValueError: rungs not ascending and below ``max_epochs``, or a running candidate without a validation at
            or before a rung.
    """
    if list(rungs) != sorted(set(rungs)) or any(r <= 0 or r >= max_epochs for r in rungs):
        raise ValueError(f"racing rungs must ascend strictly within (0, {max_epochs}), got {list(rungs)}")
    running = list(curves)
    dropped: dict[str, int] = {}
    for rung in rungs:
        so_far: dict[str, dict[str, float]] = {}
        for name in running:
            epochs = [e for e in curves[name] if e <= rung]
            if not epochs:
                raise ValueError(f"candidate {name!r} has no validation at or before racing rung {rung}")
            best_epoch = max(epochs, key=lambda e: (score_of(curves[name][e]), -e))
            so_far[name] = dict(curves[name][best_epoch])
        scores = {name: score_of(regions) for name, regions in so_far.items()}
        leader = max(s for s in scores.values() if not math.isnan(s)) if any(not math.isnan(s) for s in scores.values()) else math.nan
        learnt = {name: {r for r, v in regions.items() if v >= STALL_DICE} for name, regions in so_far.items()}
        for name in list(running):
            others = set().union(*(learnt[o] for o in running if o != name))
            only_learner = bool(learnt[name] - others)
            if not only_learner and (math.isnan(scores[name]) or scores[name] < leader - RACE_MARGIN):
                running.remove(name)
                dropped[name] = rung
    epochs = {name: dropped.get(name, max_epochs) for name in curves}
    return RaceOutcome(finished=tuple(running), dropped=dropped, epochs=epochs, cost=sum(epochs.values()) / max_epochs)
