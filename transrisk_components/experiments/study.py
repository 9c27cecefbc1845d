"""The variant study's rule: which risk-map variant becomes the bundles' default, from validation Dice only.

The candidates are the default and every ``variant`` and ``sweep`` method of the catalogue that has results; the
``study`` and ``refine`` profiles run them. Test Dice is never read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from transrisk_components.experiments.catalogue import DEFAULT_RISK, METHODS

__all__ = ["SELECTION_TIE", "choose_default", "selection_scores"]

#: Two candidates whose scores differ by less than this (mean validation Dice, 0-1) are tied.
SELECTION_TIE = 0.005


def selection_scores(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Each candidate's score under the selection rule (see :func:`choose_default`), in ``METHODS`` order.

    Each candidate (a method id) scores the mean over scenarios of its mean validation Dice (0-1) over seeds,
    counting only the scenarios in which every candidate has results (the location-wise map runs on FeTS only, so
    on a grid with iSeg scenarios every candidate is scored on the FeTS ones).
    """
    candidates = [m for m in METHODS if m == DEFAULT_RISK or METHODS[m].group in ("variant", "sweep")]
    per_scenario: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        value = float(row["val_dice"])
        if row["method"] in candidates and not math.isnan(value):
            per_scenario.setdefault(row["method"], {}).setdefault(row["scenario"], []).append(value)
    if not per_scenario:
        return {}
    common = set.intersection(*(set(scenarios) for scenarios in per_scenario.values()))
    return {
        method: sum(sum(per_scenario[method][s]) / len(per_scenario[method][s]) for s in common) / len(common)
        for method in candidates
        if method in per_scenario and common
    }


def choose_default(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The id of the risk-map variant the selection rule picks (``None`` without candidates' results).

    The rule, fixed before the study ran: the best :func:`selection_scores` wins; candidates within
    :data:`SELECTION_TIE` of it are a tie, broken in favour of the simpler one, the earlier in ``METHODS`` (the
    default first, then the variants, then the sweep).
    """
    scores = selection_scores(rows)
    if not scores:
        return None
    best = max(scores.values())
    return next(m for m in scores if scores[m] >= best - SELECTION_TIE)
