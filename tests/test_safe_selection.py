"""The safe-transfer selection rule (bundle/selection.py) and the grid's use of it (experiments.safe_transfer_rows)."""

from __future__ import annotations

import math

import pytest

from transrisk_components.experiments import (
    BETTER_OF_PLAIN_AND_SCRATCH,
    DEFAULT_RISK,
    PLAIN,
    SAFE,
    SAFE_CANDIDATES,
    SAFE_RACED,
    SCRATCH,
    safe_transfer_rows,
)
from transrisk_components.bundle.workflow.selection import (
    RACE_MARGIN,
    STALL_DICE,
    TIE_MARGIN,
    choose_candidate,
    race,
    rung_epochs,
)
from transrisk_components.reporting.results import case_rows, safe_transfer_table


def _cases(values: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Region -> per-case Dice list, as case -> region -> Dice."""
    n = len(next(iter(values.values())))
    return {f"case{i}": {region: v[i] for region, v in values.items()} for i in range(n)}


def test_the_highest_mean_over_regions_of_the_case_means_wins() -> None:
    selection = choose_candidate({
        "risk": _cases({"ET": [0.5, 0.7], "WT": [0.8, 0.8]}),  # score 0.70
        "plain": _cases({"ET": [0.6, 0.8], "WT": [0.8, 0.9]}),  # score 0.775
        "scratch": _cases({"ET": [0.1, 0.2], "WT": [0.5, 0.6]}),
    })
    assert selection.chosen == "plain" and selection.tied == ("plain",)
    assert selection.candidate("plain").score == pytest.approx(0.775)
    assert selection.candidate("risk").difference == pytest.approx(0.70 - 0.775)
    low, high = selection.candidate("scratch").difference_ci
    assert low <= selection.candidate("scratch").difference <= high < 0


def test_a_tie_within_the_margin_goes_to_the_candidate_listed_first() -> None:
    half = TIE_MARGIN / 2
    selection = choose_candidate({
        "risk": _cases({"ET": [0.6, 0.6]}),
        "plain": _cases({"ET": [0.6 + half, 0.6 + half]}),
    })
    assert selection.chosen == "risk" and selection.tied == ("risk", "plain")
    assert "tie" in selection.reason
    outside = choose_candidate({"risk": _cases({"ET": [0.6, 0.6]}), "plain": _cases({"ET": [0.6 + 2 * TIE_MARGIN] * 2})})
    assert outside.chosen == "plain"


def test_stalled_regions_are_reported() -> None:
    selection = choose_candidate({
        "plain": _cases({"ET": [0.0, 0.01], "WT": [0.9, 0.9]}),
        "scratch": _cases({"ET": [0.3, 0.3], "WT": [0.6, 0.6]}),
    })
    assert selection.candidate("plain").stalled == ("ET",) and selection.candidate("scratch").stalled == ()
    assert STALL_DICE > 0.01


def test_candidates_must_be_validated_on_the_same_regions() -> None:
    with pytest.raises(ValueError, match="different regions"):
        choose_candidate({"a": _cases({"ET": [0.5]}), "b": _cases({"WT": [0.5]})})
    with pytest.raises(ValueError, match="no validation Dice"):
        choose_candidate({"a": _cases({"ET": [0.5]}), "b": {}})


def test_rungs_are_validation_epochs_below_the_end() -> None:
    assert rung_epochs((0.25, 0.5), 40, 10) == (10, 20)
    assert rung_epochs((0.25, 0.5), 100, 10) == (30, 50)
    assert rung_epochs((0.25, 0.9, 1.0), 20, 10) == (10,)


def test_race_drops_the_clearly_worse_but_never_the_only_one_that_learnt_a_region() -> None:
    curves = {
        "risk": {10: {"ET": 0.50, "WT": 0.80}, 20: {"ET": 0.60, "WT": 0.85}, 40: {"ET": 0.6, "WT": 0.9}},
        "plain": {10: {"ET": 0.00, "WT": 0.60}, 20: {"ET": 0.00, "WT": 0.60}, 40: {"ET": 0.0, "WT": 0.6}},
        "scratch": {10: {"ET": 0.10, "WT": 0.20}, 20: {"ET": 0.20, "WT": 0.30}, 40: {"ET": 0.3, "WT": 0.5}},
    }
    outcome = race(curves, (10, 20), 40)
    assert outcome.finished == ("risk",) and outcome.dropped == {"plain": 10, "scratch": 10}
    assert outcome.cost == pytest.approx((40 + 10 + 10) / 40)
    # the same, but only scratch learnt ET: it stays although its score is far below the leader's
    curves["risk"] = {e: {"ET": 0.0, "WT": 0.9} for e in (10, 20, 40)}
    kept = race(curves, (10, 20), 40)
    assert "scratch" in kept.finished and kept.dropped == {"plain": 10}
    assert 0.45 - 0.15 > RACE_MARGIN  # scratch's score is clearly below the leader's


def test_race_refuses_rungs_that_are_not_inside_the_run() -> None:
    with pytest.raises(ValueError, match="rungs"):
        race({"a": {10: {"ET": 0.5}}}, (10, 40), 40)
    with pytest.raises(ValueError, match="no validation"):
        race({"a": {20: {"ET": 0.5}}}, (10,), 40)


def _row(method: str, seed: int, val: dict[str, list[float]], test: float, curve_et: tuple[float, ...]) -> dict:
    return {
        "scenario": "s", "kind": "k", "bundle": "fets", "method": method, "group": "main", "seed": seed,
        "val_dice": 0.0, "test_dice": test, "test_dice_ET": test,
        "test_cases": {"t0": {"ET": test}, "t1": {"ET": test}},
        "val_cases": _cases(val),
        "val_curve": {str(e): {"ET": v} for e, v in zip((10, 20, 30, 40), curve_et)},
    }


def test_grid_safe_rows_choose_on_validation_only_and_name_the_oracle() -> None:
    rows = [
        # seed 0: the risk map is best on validation but worst on test; plain is the test oracle among plain/scratch
        _row(DEFAULT_RISK, 0, {"ET": [0.8, 0.8]}, 0.40, (0.5, 0.6, 0.7, 0.8)),
        _row(PLAIN, 0, {"ET": [0.7, 0.7]}, 0.70, (0.5, 0.6, 0.7, 0.7)),
        _row(SCRATCH, 0, {"ET": [0.1, 0.1]}, 0.60, (0.0, 0.1, 0.1, 0.1)),
        # seed 1: plain never learns ET; scratch does
        _row(DEFAULT_RISK, 1, {"ET": [0.5, 0.5]}, 0.50, (0.3, 0.4, 0.5, 0.5)),
        _row(PLAIN, 1, {"ET": [0.0, 0.0]}, 0.00, (0.0, 0.0, 0.0, 0.0)),
        _row(SCRATCH, 1, {"ET": [0.6, 0.6]}, 0.65, (0.25, 0.35, 0.5, 0.6)),
    ]
    derived = {(r["method"], r["seed"]): r for r in safe_transfer_rows(rows, max_epochs=40, val_interval=10)}
    assert derived[(SAFE, 0)]["chosen"] == DEFAULT_RISK and derived[(SAFE, 0)]["test_dice"] == 0.40
    assert derived[(SAFE, 1)]["chosen"] == SCRATCH
    assert derived[(BETTER_OF_PLAIN_AND_SCRATCH, 0)]["chosen"] == PLAIN
    assert derived[(BETTER_OF_PLAIN_AND_SCRATCH, 1)]["chosen"] == SCRATCH
    # racing at epochs 10 and 20: seed 0 drops scratch (0.0 vs 0.5) at 10; seed 1 keeps all but plain
    assert derived[(SAFE_RACED, 0)]["chosen"] == DEFAULT_RISK and derived[(SAFE_RACED, 0)]["cost"] == pytest.approx(2.25)
    assert derived[(SAFE_RACED, 1)]["chosen"] == SCRATCH and derived[(SAFE_RACED, 1)]["cost"] == pytest.approx(2.25)
    table = safe_transfer_table(rows + list(derived.values()), case_rows(rows + list(derived.values())), SAFE,
                                SAFE_RACED, PLAIN, BETTER_OF_PLAIN_AND_SCRATCH, SAFE_CANDIDATES)
    assert "| s | 2 | 1/0/1 | 1/2 |" in table
    assert "Promise 2" in table and "not met" in table
    assert not math.isnan(derived[(SAFE, 1)]["cost"])


def test_the_report_of_a_one_case_choice_is_strict_json(tmp_path) -> None:
    import json

    from transrisk_components.bundle.workflow.report import transfer_report, write_transfer_report
    from transrisk_components.bundle.workflow.selection import RaceOutcome

    selection = choose_candidate({"risk_map": {"case": {"ET": 0.4}}, "scratch": {"case": {"ET": 0.2}}})
    assert all(math.isnan(v) for v in selection.candidate("risk_map").score_ci), "one case gives no CI"
    outcome = RaceOutcome(finished=("risk_map", "scratch"), epochs={"risk_map": 1, "scratch": 1}, cost=2.0)
    report = transfer_report(selection, outcome, selection.cases, ["scratch"], [], tmp_path / "model.pt")
    path = write_transfer_report(report, tmp_path)

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    written = json.loads(path.read_text(), parse_constant=refuse)
    assert written["candidates"]["risk_map"]["score_ci"] == [None, None]
