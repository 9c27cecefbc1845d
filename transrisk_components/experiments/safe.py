"""Safe transfer over the grid's cells: the rows of the methods derived from the candidates' results.

The choice is the bundles' own rule (:mod:`transrisk_components.bundle.workflow.selection`), applied to the validation Dice
that the candidates' cells recorded, so the grid never picks by another rule than the product does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transrisk_components.bundle.workflow.selection import choose_candidate, race, rung_epochs
from transrisk_components.experiments.catalogue import (
    BEST_CANDIDATE,
    BETTER_OF_PLAIN_AND_SCRATCH,
    CONTROLS,
    DEFAULT_RISK,
    PLAIN,
    SAFE,
    SAFE_ENSEMBLE,
    SAFE_RACED,
    SCRATCH,
)

__all__ = ["SAFE_CANDIDATES", "SAFE_RUNGS", "safe_transfer_rows"]

#: The candidates of safe transfer in the bundles' default order (the selection rule's tie order).
SAFE_CANDIDATES = (DEFAULT_RISK, PLAIN, SCRATCH)
#: Racing rungs as fractions of the fine-tuning length (the bundles' ``safe#rungs``).
SAFE_RUNGS = (0.25, 0.5)


def safe_transfer_rows(
    rows: Sequence[Mapping[str, Any]], max_epochs: int, val_interval: int,
    candidates: Sequence[str] = SAFE_CANDIDATES, rungs: Sequence[float] = SAFE_RUNGS,
    controls: Mapping[str, Sequence[str]] = CONTROLS,
) -> list[dict[str, Any]]:
    """Rows of the methods that safe transfer derives from the candidates' cells, per (scenario, seed).

    - ``SAFE``: the candidate :func:`~transrisk_components.bundle.workflow.selection.choose_candidate` picks from the
      candidates' per-case validation Dice (the bundles' rule, validation only);
    - ``SAFE_RACED``: the same rule among the candidates that :func:`~transrisk_components.bundle.workflow.selection.race`
      lets finish, replayed on the candidates' validation curves (a resumed run continues as the uninterrupted one
      did, so the replay is the race's outcome); its ``cost`` is the epochs trained over one full run's;
    - ``BETTER_OF_PLAIN_AND_SCRATCH``: per seed, whichever of plain fine-tuning and scratch has the higher mean
      test Dice;
    - ``BEST_CANDIDATE``: per seed, the candidate with the highest mean test Dice (the best single start, an oracle);
    - ``SAFE_ENSEMBLE``: the same rule among the candidates and then their ensembles (rows of group ``ensemble``,
      :func:`~transrisk_components.experiments.ensembles.ensemble_rows`), where the (scenario, seed) has them;
      ``cost`` counts training runs (an ensemble's inference costs one pass per member);
    - the equal-compute controls (:data:`~transrisk_components.experiments.catalogue.CONTROLS`: three restarts of
      plain fine-tuning, of the risk map), each chosen among its restarts by the same rule, cost 3 runs -- where the
      (scenario, seed) has every restart's cell.

    Args:
        rows: cell rows (:func:`~transrisk_components.experiments.runner.run_cell`) with ``val_cases`` and
            ``val_curve``; ``method`` holds method ids.
        max_epochs, val_interval: the cells' fine-tuning length and validation interval (epochs).
        candidates: method ids, in the rule's tie order.
        rungs: racing rungs as fractions of ``max_epochs``.
        controls: control id -> the method ids it chooses among, in tie order.

    Returns:
        Per (scenario, seed) with every candidate's cell, a copy of the chosen cell's row (its test Dice and test
        cases) for each derived method, with ``method`` and ``group`` (``derived``) replaced and ``chosen`` (the
        candidate's id) and ``cost`` (in full runs) added. A (scenario, seed) without every candidate (of safe
        transfer, of a control) has no row of that method.
    """
    cells = {(r["scenario"], int(r["seed"]), r["method"]): r for r in rows}
    derived = []
    for scenario, seed in dict.fromkeys((r["scenario"], int(r["seed"])) for r in rows):
        for control, restarts in controls.items():
            found = {m: cells.get((scenario, seed, m)) for m in restarts}
            if all(row is not None for row in found.values()):
                chosen = choose_candidate({m: row["val_cases"] for m, row in found.items()}).chosen
                derived.append({**found[chosen], "method": control, "group": "derived", "chosen": chosen,
                                "cost": float(len(restarts))})
        found = {m: cells.get((scenario, seed, m)) for m in candidates}
        if any(row is None for row in found.values()):
            continue
        validation = {m: row["val_cases"] for m, row in found.items()}
        choice = choose_candidate(validation).chosen
        curves = {m: {int(e): v for e, v in row["val_curve"].items()} for m, row in found.items()}
        outcome = race(curves, rung_epochs(rungs, max_epochs, val_interval), max_epochs)
        raced = choose_candidate({m: validation[m] for m in outcome.finished}).chosen
        oracle = max((PLAIN, SCRATCH), key=lambda m: (cells[(scenario, seed, m)]["test_dice"], m == PLAIN))
        best = max(candidates, key=lambda m: (found[m]["test_dice"], -candidates.index(m)))
        for method, chosen, cost in ((SAFE, choice, float(len(candidates))), (SAFE_RACED, raced, outcome.cost),
                                     (BETTER_OF_PLAIN_AND_SCRATCH, oracle, 2.0),
                                     (BEST_CANDIDATE, best, float(len(candidates)))):
            derived.append({**cells[(scenario, seed, chosen)], "method": method, "group": "derived", "chosen": chosen,
                            "cost": cost})
        ensembles = {r["method"]: r for r in rows if r.get("group") == "ensemble"
                     and (r["scenario"], int(r["seed"])) == (scenario, seed)}
        if ensembles:
            chosen = choose_candidate({**validation, **{m: r["val_cases"] for m, r in ensembles.items()}}).chosen
            row = cells[(scenario, seed, chosen)] if chosen in found else ensembles[chosen]
            derived.append({**row, "method": SAFE_ENSEMBLE, "group": "derived", "chosen": chosen,
                            "cost": float(len(candidates))})
    return derived
