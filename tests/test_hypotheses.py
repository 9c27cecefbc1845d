"""The second pre-registered study's hypotheses, judged from per-case results as its report will be."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from transrisk_components.experiments.hypotheses import hypotheses_markdown, judge_hypotheses

SCENARIOS = [f"s{i}" for i in range(6)]


def _cases(shift: dict[str, dict[str, float]]) -> list[dict]:
    """Per-case Dice of every compared method: a base per (seed, case), safe_ensemble shifted per scenario and
    baseline (``shift[scenario][baseline]`` = safe_ensemble - baseline), with per-seed noise."""
    rng = np.random.default_rng(0)
    rows = []
    for scenario in SCENARIOS:
        for seed in range(5):
            for case in range(3):
                base = 0.5 + 0.05 * rng.standard_normal()
                noise = 0.002 * rng.standard_normal()
                rows.append({"scenario": scenario, "method": "safe_ensemble", "seed": seed, "case_id": f"c{case}",
                             "region": "ET", "dice": base})
                for baseline, gap in shift[scenario].items():
                    rows.append({"scenario": scenario, "method": baseline, "seed": seed, "case_id": f"c{case}",
                                 "region": "ET", "dice": base - gap + noise})
    return rows


def _shift(h2_scenarios: int, below_better: str | None = None, below_best: float = 0.0) -> dict[str, dict[str, float]]:
    return {s: {"best_candidate": -below_best, "plain_x3": 0.05 if i < h2_scenarios else 0.0,
                "risk_x3": 0.05 if i < h2_scenarios else 0.0,
                "better_of_plain_scratch": -0.1 if s == below_better else 0.01}
            for i, s in enumerate(SCENARIOS)}


def test_all_three_hold_when_the_data_say_so() -> None:
    verdicts = {h.name: h for h in judge_hypotheses(_cases(_shift(h2_scenarios=4)))}
    assert verdicts["H1"].held and verdicts["H2"].held and verdicts["H3"].held
    assert "held in 4" in verdicts["H2"].statement
    text = hypotheses_markdown(list(verdicts.values()))
    assert "**H1 held**" in text and "leave-one-seed-out" in text and "s5:" in text


def test_each_fails_on_its_own_evidence() -> None:
    verdicts = {h.name: h for h in judge_hypotheses(_cases(_shift(h2_scenarios=3, below_better="s2", below_best=0.02)))}
    assert not verdicts["H1"].held, "2 points below the best single candidate in every scenario"
    assert not verdicts["H2"].held and "held in 3" in verdicts["H2"].statement
    assert not verdicts["H3"].held, "significantly below the better of plain and scratch in s2"
    assert "**H3 failed**" in hypotheses_markdown(list(verdicts.values()))


def test_a_report_without_the_controls_is_refused_naming_them() -> None:
    cases = [c for c in _cases(_shift(4)) if c["method"] != "risk_x3"]
    with pytest.raises(ValueError, match="safe_ensemble - risk_x3"):
        judge_hypotheses(cases)


@pytest.mark.skipif(not (Path(__file__).resolve().parents[1] / ".git").exists(), reason="needs the git history")
def test_machine_notes_say_whether_the_registered_files_are_the_registered_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    from transrisk_components.experiments import reproduce

    assert "are those of" in reproduce._registration_note(), "the registered files are unchanged on this checkout"
    monkeypatch.setattr(reproduce, "CONFIRM2_REGISTRATION", "776004f")  # 0.8.0, before the study's files existed
    monkeypatch.setattr(reproduce, "REGISTERED_FILES", ("transrisk_components/experiments/safe.py",))
    assert "CHANGED since 776004f: transrisk_components/experiments/safe.py" in reproduce._registration_note()
