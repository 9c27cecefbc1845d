"""The second pre-registered study's hypotheses, judged from per-case results as its report will be."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from transrisk_components.experiments.ensembles_default import ensembles_default
from transrisk_components.experiments.hypotheses import hypotheses_markdown, judge_hypotheses
from transrisk_components.experiments.reports import beside_hypotheses_markdown, hypothesis_comparisons, plot_hypotheses
from transrisk_components.reporting.results import write_case_results_csv, write_results_csv

REPO = Path(__file__).resolve().parents[1]

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


def test_the_figure_marks_each_comparison_as_its_hypothesis_judges_it(tmp_path: Path) -> None:
    cases = _cases(_shift(h2_scenarios=3, below_better="s2", below_best=0.02))
    entries = hypothesis_comparisons(cases)
    assert len(entries) == 4 * len(SCENARIOS) and [e.panel for e in entries] == sorted(e.panel for e in entries)
    met: dict[tuple[str, str], list[bool]] = {}  # (scenario, hypothesis) -> whether each of its comparisons meets it
    for entry in entries:
        met.setdefault((entry.panel, entry.label[-3:-1]), []).append(entry.met)  # labels end in "(H1)" etc.
    assert not any(any(met[s, "H1"]) for s in SCENARIOS), "2 points below the best single candidate in every scenario"
    assert [s for s in SCENARIOS if all(met[s, "H2"])] == ["s0", "s1", "s2"]
    assert [s for s in SCENARIOS if not all(met[s, "H3"])] == ["s2"]
    png = plot_hypotheses(cases, judge_hypotheses(cases), tmp_path / "hypotheses.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def _with_safe(shift: dict[str, dict[str, float]], gap: float, scenario: str = "s0") -> list[dict]:
    """:func:`_cases` of ``shift`` plus ``safe``, exactly ``gap`` below safe_ensemble in ``scenario`` and equal to it
    elsewhere (where validation never kept an ensemble, the two are the same model)."""
    rows = _cases(shift)
    return rows + [{**row, "method": "safe", "dice": row["dice"] - (gap if row["scenario"] == scenario else 0.0)}
                   for row in rows if row["method"] == "safe_ensemble"]


def test_ensembles_become_the_default_only_by_the_registered_rule() -> None:
    """On only where H1 holds at both lengths and safe_ensemble - safe has its seed-CI lower bound >= 0 everywhere."""
    level = _with_safe(_shift(h2_scenarios=0), gap=0.0)
    gain = _with_safe(_shift(h2_scenarios=0), gap=0.02)
    loss = _with_safe(_shift(h2_scenarios=0), gap=-0.02, scenario="s3")
    below_best = _with_safe(_shift(h2_scenarios=0, below_best=0.02), gap=0.0)
    decided = ensembles_default({"40 epochs": level, "160 epochs": gain})
    assert decided.adopt and len(decided.evidence) == 2 and "160 epochs: H1 held" in decided.evidence[1]
    assert not ensembles_default({"40 epochs": level, "160 epochs": loss}).adopt, "below safe in one scenario"
    refused = ensembles_default({"40 epochs": below_best, "160 epochs": level})
    assert not refused.adopt and "40 epochs: H1 failed" in refused.evidence[0], "H1 failed at one length"
    with pytest.raises(ValueError, match="both training lengths"):
        ensembles_default({"40 epochs": level})


def test_the_decision_from_the_command_line_ends_with_on_or_off(tmp_path: Path) -> None:
    """``scripts/reproduce.py ensembles_default`` on two reports' CSVs."""
    for length, cases in (("epochs40", _with_safe(_shift(h2_scenarios=0), gap=0.0)),
                          ("epochs160", _with_safe(_shift(h2_scenarios=0), gap=-0.02, scenario="s3"))):
        (tmp_path / length).mkdir()
        write_results_csv([{"scenario": "s0", "method": "safe", "seed": 0, "test_dice": 0.5}], tmp_path / length / "results.csv")
        write_case_results_csv(cases, tmp_path / length / "results_per_case.csv")
    done = subprocess.run([sys.executable, "scripts/reproduce.py", "ensembles_default", str(tmp_path / "epochs40" / "results.csv"),
                           str(tmp_path / "epochs160" / "results.csv")], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines[-1] == "ensembles default: off", done.stdout + done.stderr
    assert lines[0].startswith("epochs40: H1 held") and "s3 -2.0 [-2.0, -2.0]" in lines[1]


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


def test_what_is_reported_beside_the_hypotheses_counts_kept_ensembles_and_compares_safe_without_them() -> None:
    cases = _with_safe(_shift(h2_scenarios=4), gap=0.02, scenario="s0")
    rows = [{"scenario": s, "method": "safe_ensemble", "seed": seed, "chosen": "ensemble_top2" if seed < 2 else "plain"}
            for s in SCENARIOS for seed in range(5)]
    text = beside_hypotheses_markdown(rows, cases)
    s0, s1 = (next(line for line in text.splitlines() if line.startswith(f"- {s}: ")) for s in ("s0", "s1"))
    assert "an ensemble kept in 2 of 5 seeds" in s0
    assert "safe transfer with ensembles - safe transfer +2.0 seeds [+2.0, +2.0]" in s0, "safe is 2 points below in s0"
    assert "safe transfer with ensembles - safe transfer +0.0 seeds [+0.0, +0.0]" in s1
    assert "safe transfer - plain x3 restarts, chosen on validation +3.0 seeds" in s0  # 5 points less the 2
