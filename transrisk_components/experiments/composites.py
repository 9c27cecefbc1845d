"""The per-region composite in the grid (exploratory; not part of the registered study of #35).

Per (scenario, seed), the composite that safe transfer scores with ``safe#composites true``: each region from the
candidate cell with the best mean validation Dice on it (the bundles' own
:func:`~transrisk_components.bundle.workflow.composites.region_assignment`), written as one checkpoint
(:func:`~transrisk_components.bundle.engine.composite.write_composite_checkpoint`) into
``cells/<scenario>/composite_regions/seed<k>/models/model.pt`` and evaluated like a cell; none where one candidate is
the best on every region. Then ``safe_composite``: the bundles' rule among the candidates, their ensembles (rows of
group ``ensemble``) and the composite, in that order, as ``training`` with both settings on would choose.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from transrisk_components.bundle.engine.composite import write_composite_checkpoint
from transrisk_components.bundle.workflow.composites import region_assignment, region_signatures
from transrisk_components.bundle.workflow.selection import choose_candidate
from transrisk_components.experiments.catalogue import COMPOSITE_REGIONS, METHODS, SAFE_COMPOSITE, SCENARIOS
from transrisk_components.experiments.cells import Cell, bundle_config
from transrisk_components.experiments.profiles import Profile
from transrisk_components.experiments.runner import evaluate_model_row
from transrisk_components.utils.io import atomic_write_text, file_sha256

__all__ = ["COMPOSITE_GROUP", "composite_rows", "safe_composite_rows"]

#: The ``group`` of a composite's row: evaluated like a cell, trained by none.
COMPOSITE_GROUP = "composite"
#: How a row's composite was evaluated, recorded in it: the evaluation config's inferer run member by member, then
#: composed (rows without it composed each sliding window and averaged the composed scores, and are evaluated again).
EVALUATED_WITH = {"inferer": "MemberwiseInferer"}


def _target_task(scenario: str) -> str:
    """The scenario's target task: its override, else the bundle's ``train.json`` default."""
    spec = SCENARIOS[scenario]
    if "target_task" in spec.overrides:
        return str(spec.overrides["target_task"])
    return str(json.loads(Path(bundle_config(spec.bundle, "train")).read_text())["target_task"])


def _seeds_with_every_candidate(
    rows: Sequence[Mapping[str, Any]], candidates: Sequence[str]
) -> Iterator[tuple[str, int, dict[str, Mapping[str, Any]]]]:
    """``(scenario, seed, {candidate: its cell row})`` for each (scenario, seed) of ``rows``, in their order, where
    every one of ``candidates`` has a row."""
    cells = {(r["scenario"], int(r["seed"]), r["method"]): r for r in rows}
    for scenario, seed in dict.fromkeys((r["scenario"], int(r["seed"])) for r in rows):
        found = {m: cells.get((scenario, seed, m)) for m in candidates}
        if all(row is not None for row in found.values()):
            yield scenario, seed, found


def composite_rows(
    rows: Sequence[Mapping[str, Any]], root: Path, profile: Profile, dataset_dirs: Mapping[str, str | None],
    candidates: Sequence[str],
) -> list[dict[str, Any]]:
    """The composite rows of every (scenario, seed) whose ``candidates`` all have a cell row and differ in which is
    best per region, evaluated (or reused while their members' models and assignment are the ones recorded) in
    ``root``; a row is :func:`~transrisk_components.experiments.runner.evaluate_model_row`'s plus ``members``
    (``"risk+plain"``), ``region_from`` (region -> candidate; kept out of ``results.csv``), ``member_sha256`` and
    ``evaluated_with`` (:data:`EVALUATED_WITH`)."""
    found = []
    for scenario, seed, member_rows in _seeds_with_every_candidate(rows, candidates):
        regions, signatures = region_signatures(SCENARIOS[scenario].bundle, _target_task(scenario))
        assignment = region_assignment({m: row["val_cases"] for m, row in member_rows.items()}, regions)
        if assignment is None:
            continue
        members = [Cell(SCENARIOS[scenario], METHODS[m], seed) for m in candidates if m in assignment.values()]
        folder = root / "cells" / scenario / COMPOSITE_REGIONS / f"seed{seed}"
        models = [cell.folder(root) / "models" / "model.pt" for cell in members]
        record = {"member_sha256": {cell.method.id: file_sha256(model) for cell, model in zip(members, models)},
                  "region_from": assignment, "evaluated_with": EVALUATED_WITH}
        result_path = folder / "result.json"
        if result_path.is_file():
            row = json.loads(result_path.read_text())
            if all(row.get(key) == value for key, value in record.items()):
                found.append(row)
                continue
        model = folder / "models" / "model.pt"
        ids = [cell.method.id for cell in members]
        write_composite_checkpoint(models, signatures, [ids.index(assignment[region]) for region in regions], model)
        row = {**evaluate_model_row(COMPOSITE_REGIONS, COMPOSITE_GROUP, members[0], folder, model, root, profile, dataset_dirs),
               "members": "+".join(ids), **record}
        atomic_write_text(result_path, json.dumps(row, indent=2) + "\n")
        found.append(row)
    return found


def safe_composite_rows(rows: Sequence[Mapping[str, Any]], candidates: Sequence[str]) -> list[dict[str, Any]]:
    """Per (scenario, seed) with every candidate's cell: a copy of the row the bundles' rule picks among the
    candidates, then the ensembles, then the composite (where each exists), with ``method`` ``safe_composite``,
    ``group`` ``derived``, ``chosen`` and ``cost`` (training runs: the candidates')."""
    derived = []
    for scenario, seed, found in _seeds_with_every_candidate(rows, candidates):
        combined = {r["method"]: r for r in rows if r.get("group") in ("ensemble", COMPOSITE_GROUP)
                    and (r["scenario"], int(r["seed"])) == (scenario, seed)}
        ordered = {**found, **{m: r for m, r in combined.items() if r["group"] == "ensemble"},
                   **{m: r for m, r in combined.items() if r["group"] == COMPOSITE_GROUP}}
        chosen = choose_candidate({m: row["val_cases"] for m, row in ordered.items()}).chosen
        derived.append({**ordered[chosen], "method": SAFE_COMPOSITE, "group": "derived", "chosen": chosen,
                        "cost": float(len(candidates))})
    return derived
