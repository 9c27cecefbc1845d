"""The transfer report: what safe transfer chose, why, and where transfer hurt, as JSON, a figure and log lines.

Written by the run (:mod:`.pipeline`) after the selection rule (:mod:`.selection`) chose among the candidates on the
validation cases: ``eval/transfer_report.json`` and ``eval/transfer_report.png`` -- each candidate's validation Dice
per region with its CI over cases, the choice and its reason, each region where training from scratch beat every
transfer candidate on validation (negative transfer, named), the classes the risk stage found the source gives no
information about beside what the candidates then learnt -- and the same in the last lines of the log.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transrisk_components.bundle.workflow.composites import COMPOSITE
from transrisk_components.bundle.workflow.selection import RaceOutcome, Selection
from transrisk_components.reporting.figures import plot_transfer_report
from transrisk_components.utils.io import atomic_write_text

__all__ = ["negative_transfer", "transfer_report", "transfer_report_lines", "write_transfer_report"]

logger = logging.getLogger(__name__)


def negative_transfer(selection: Selection, scratch: Sequence[str], transfer: Sequence[str]) -> list[dict[str, Any]]:
    """The regions where the best candidate trained from scratch beat the best transfer candidate on validation:
    ``[{"region", "scratch", "best_transfer", "difference"}]`` (difference in Dice, 0-1)."""
    if not scratch or not transfer:
        return []
    found = []
    for region in selection.candidate(transfer[0]).regions:
        best_transfer = max(transfer, key=lambda n: selection.candidate(n).regions[region])
        best_scratch = max(scratch, key=lambda n: selection.candidate(n).regions[region])
        gap = selection.candidate(best_scratch).regions[region] - selection.candidate(best_transfer).regions[region]
        if gap > 0:
            found.append({"region": region, "scratch": best_scratch, "best_transfer": best_transfer, "difference": gap})
    return found


def transfer_report(
    selection: Selection,
    outcome: RaceOutcome,
    validation_cases: int,
    scratch: Sequence[str],
    dead_classes: Sequence[str],
    model_path: Path,
    k_fold: Mapping[str, Any] | None = None,
    ensembles: Mapping[str, Sequence[str]] | None = None,
    composite: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The report as data (the JSON's content).

    Args:
        selection: the rule's outcome over the candidates that finished.
        outcome: which candidates finished, which racing dropped, the cost in runs.
        validation_cases: the number of validation cases the choice rests on.
        scratch: the candidates that do not start from the source.
        dead_classes: the classes the risk stage found the source gives no information about.
        model_path: where the chosen model was installed.
        k_fold: with k-fold choice, ``{"folds", "pooled_cases", "runs", "runs_with_one_split", "final_run"}``;
            ``None``: one validation split.
        ensembles: ensemble or composite candidate -> its members (``safe#ensembles``, ``safe#composites``); they
            are left out of the negative-transfer comparison, which is between single starts.
        composite: the per-region composite's region -> candidate, when one was scored.
    """
    ensembles = {name: list(members) for name, members in (ensembles or {}).items()}
    names = [c.name for c in selection.candidates]
    scratch = [n for n in scratch if n in names]
    transfer = [n for n in names if n not in scratch and n not in ensembles]
    return {
        "chosen": selection.chosen,
        "reason": selection.reason,
        "tied": list(selection.tied),
        "model": str(model_path),
        "validation_cases": validation_cases,
        "uncertain": selection.uncertain,
        "uncertainty": selection.warning,
        "candidates": {
            c.name: {"score": c.score, "score_ci": list(c.score_ci), "regions": c.regions,
                     "difference_to_chosen": c.difference, "difference_ci": list(c.difference_ci),
                     "stalled_regions": list(c.stalled), "epochs": outcome.epochs.get(c.name),
                     **({"members": ensembles[c.name], "inference_cost": len(ensembles[c.name])} if c.name in ensembles else {}),
                     **({"region_from": dict(composite)} if composite and c.name == COMPOSITE else {})}
            for c in selection.candidates
        },
        "k_fold": dict(k_fold) if k_fold else None,
        "dropped_by_racing": outcome.dropped,
        "cost_in_runs": outcome.cost,
        "negative_transfer": negative_transfer(selection, scratch, transfer),
        "scratch_candidates": scratch,
        "leep_dead_classes": {"classes": list(dead_classes),
                              "stalled_regions_of_transfer_candidates": {n: list(selection.candidate(n).stalled) for n in transfer}},
    }


def write_transfer_report(report: Mapping[str, Any], output_dir: Path) -> Path:
    """Write ``transfer_report.json`` (strict JSON: a CI from one case, NaN in memory, is ``null``) and its figure
    (:func:`~transrisk_components.reporting.figures.plot_transfer_report`: the candidates' validation Dice per region,
    the choice, its reason and warnings) under ``output_dir``; return the JSON's path."""
    text = json.dumps(_strict(report), indent=2, allow_nan=False)
    path = atomic_write_text(output_dir / "transfer_report.json", text + "\n")
    plot_transfer_report(report, output_dir / "transfer_report.png")
    return path


def _strict(value: Any) -> Any:
    """``value`` with every float that JSON cannot hold (NaN, infinity) as ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item) for item in value]
    return value


def _interval(ci: Sequence[float]) -> str:
    """``[low, high]`` in Dice points, or why there is none."""
    if any(math.isnan(v) for v in ci):
        return "[no CI from one case]"
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def transfer_report_lines(report: Mapping[str, Any], report_path: Path) -> str:
    """The last lines of the run: the candidates, the choice, negative transfer, where the model is."""
    k_fold = report.get("k_fold")
    scored = (f"{report['validation_cases']} cases (k-fold choice: each case scored by the run that held out its "
              f"fold of {k_fold['folds']})" if k_fold else f"{report['validation_cases']} cases")
    lines = [f"safe transfer, validation Dice (%) on {scored}, mean over regions [95% CI over cases]:"]
    for name, entry in report["candidates"].items():
        regions = ", ".join(f"{r} {100 * v:.1f}" for r, v in entry["regions"].items())
        stalled = f"; never learnt {', '.join(entry['stalled_regions'])}" if entry["stalled_regions"] else ""
        marker = "  <- chosen" if name == report["chosen"] else ""
        if "region_from" in entry:
            parts = ", ".join(f"{region} from {member}" for region, member in entry["region_from"].items())
            name = f"{name} ({parts}; inference x{entry['inference_cost']})"
        elif "members" in entry:
            name = f"{name} (softmax mean of {', '.join(entry['members'])}; inference x{entry['inference_cost']})"
        lines.append(f"  {name}: {100 * entry['score']:.1f} {_interval(entry['score_ci'])} ({regions}{stalled}){marker}")
    for name, rung in report["dropped_by_racing"].items():
        lines.append(f"  {name}: dropped by racing at epoch {rung}")
    for item in report["negative_transfer"]:
        lines.append(f"  negative transfer in {item['region']}: {item['scratch']} beat {item['best_transfer']} by "
                     f"{100 * item['difference']:.1f} points on validation")
    if not report["negative_transfer"] and report["scratch_candidates"]:
        lines.append("  no region where training from scratch beat transfer on validation")
    if report["leep_dead_classes"]["classes"]:
        lines.append(f"  LEEP warned that the source sees nothing of {', '.join(report['leep_dead_classes']['classes'])}")
    lines.append(f"  chosen: {report['reason']}")
    chosen = report["candidates"][report["chosen"]]
    if "members" in chosen:
        lines.append(f"  the chosen model combines {chosen['inference_cost']} networks: inference costs "
                     f"x{chosen['inference_cost']}; its TorchScript export is 'ckpt_export network' (not network_def)")
    if k_fold:
        lines.append(f"  k-fold choice: {report['chosen']} retrained on all {k_fold['pooled_cases']} pooled cases "
                     f"({k_fold['final_run']}; with no case held out, its checkpoint is its last epoch's); cost "
                     f"{k_fold['runs']} fine-tuning runs (one validation split: {k_fold['runs_with_one_split']})")
    lines.append(f"  model: {report['model']}; report: {report_path} (and .png)")
    return "\n".join(lines)
