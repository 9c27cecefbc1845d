"""Reports of the experiment grid, from a hand-made results CSV and from the committed reports."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from transrisk_components.experiments import (
    DEFAULT_RISK,
    DERIVED_METHODS,
    METHODS,
    PLAIN,
    PROFILES,
    SAFE,
    SCRATCH,
    choose_default,
    grid,
    load_results,
    method_id,
    method_label,
)
from transrisk_components.reporting.results import (
    case_rows,
    cases_of_learned_runs,
    load_case_results_csv,
    load_results_csv,
    markdown_table,
    mean_dice_with_ci,
    paired_case_statistics,
    plot_few_shot_curve,
    plot_method_comparison,
    plot_paired_differences,
    plot_runs_against_baseline,
    region_table,
    stalled_runs,
    summarise_results,
    write_case_results_csv,
    write_results_csv,
)


REPO = Path(__file__).resolve().parents[1]
CASE_OFFSETS = (-0.05, 0.0, 0.05, 0.1)  # four test cases per cell, around the cell's mean


def rows():
    """Two scenarios x two methods x three seeds x four test cases. The risk map gains 2 points on every case of
    'a' (+/- 0.5 by case), and on 'b' gains or loses 1 point on alternate cases (no detectable difference)."""
    out = []
    for seed, base in enumerate([0.60, 0.70, 0.65]):
        for scenario in ("a", "b"):
            for method in (PLAIN, DEFAULT_RISK):
                cases = {}
                for k, offset in enumerate(CASE_OFFSETS):
                    gain = 0.0 if method == PLAIN else (0.02 + (0.005 if k % 2 else -0.005) if scenario == "a"
                                                        else (0.01 if (k + seed) % 2 else -0.01))
                    cases[f"case{k}"] = {"ET": base + offset + gain, "WT": base + offset + gain}
                dice = sum(c["ET"] for c in cases.values()) / len(cases)
                out.append({"scenario": scenario, "kind": "k", "bundle": "fets", "method": method, "group": "main",
                            "seed": seed, "val_dice": dice, "test_dice": dice, "test_hd95": 3.0, "test_cases": cases})
    return out


def test_csv_round_trip(tmp_path):
    path = write_results_csv(rows(), tmp_path / "results.csv")
    loaded = load_results_csv(path)
    assert len(loaded) == 12 and "test_cases" not in loaded[0]
    assert loaded[0]["test_dice"] == pytest.approx(0.625)
    assert loaded[0]["seed"] == 0
    cases = load_case_results_csv(write_case_results_csv(case_rows(rows()), tmp_path / "cases.csv"))
    assert len(cases) == 12 * 4 * 2 and cases == case_rows(rows())


def test_summary_and_paired_case_statistics():
    stats = summarise_results(rows())
    mean, std, n = stats[("a", PLAIN)]
    assert (mean, n) == (pytest.approx(0.675), 3) and std == pytest.approx(0.05)
    paired = paired_case_statistics(case_rows(rows()), PLAIN)
    gain = paired[("a", DEFAULT_RISK)]
    assert (gain.n_pairs, gain.n_seeds) == (12, 3) and gain.mean == pytest.approx(0.02)
    # every seed gains 2 points on average (+/- 0.5 by case): the seed CI has no width, whatever the cases do
    assert gain.seed_low == gain.seed_high == gain.mean
    assert [s for s, _ in gain.without_seed] == [0, 1, 2] and all(v == pytest.approx(0.02) for _, v in gain.without_seed)
    assert gain.verdict() == "gain (seed CI above 0)"
    null = paired[("b", DEFAULT_RISK)]  # seed means +0.0, +0.0, +0.0 too, but by cancelling cases
    assert null.mean == pytest.approx(0.0, abs=1e-12)
    assert null.verdict().startswith("no detectable difference (seed CI half-width 0.0")
    assert ("a", PLAIN) not in paired
    # one region alone, and the same CI for the same bootstrap seed
    assert paired_case_statistics(case_rows(rows()), PLAIN, region="ET")[("a", DEFAULT_RISK)] == gain


def test_table_states_where_risk_map_does_not_win():
    table = markdown_table(rows(), case_rows(rows()), list(METHODS), baseline=PLAIN, highlight=DEFAULT_RISK)
    assert f"| {PLAIN} | 67.5 ± 5.0 | 67.5 ± 5.0 |" in table
    assert "- a: +2.0 seeds [+2.0, +2.0] points over 3 seeds (12 pairs): gain (seed CI above 0); leave-one-seed-out: " \
           "+2.0 .. +2.0 (seed 0 carries +0.0)." in table
    assert "- b: +0.0 seeds [" in table and "over 3 seeds (12 pairs): no detectable difference (seed CI half-width" in table


def test_a_run_that_never_predicts_one_region_counts_as_stalled():
    def run(method: str, seed: int, et: float, wt: float | str) -> dict:
        return {"scenario": "a", "method": method, "seed": seed, "test_dice_ET": et, "test_dice_WT": wt}

    data = [run(PLAIN, 0, 0.0, 0.45), run(PLAIN, 1, 0.6, 0.7), run(PLAIN, 2, 0.049, 0.5),
            run(DEFAULT_RISK, 0, 0.05, 0.4), run(DEFAULT_RISK, 1, 0.6, ""), run(DEFAULT_RISK, 2, 0.7, "nan")]
    assert stalled_runs(data) == {("a", PLAIN): (2, 3), ("a", DEFAULT_RISK): (0, 3)}
    cases = [{"scenario": "a", "method": r["method"], "seed": r["seed"], "case_id": "c", "region": "ET", "dice": 0.5}
             for r in data]
    kept = cases_of_learned_runs(data, cases)
    assert [(c["method"], c["seed"]) for c in kept] == [(PLAIN, 1), (DEFAULT_RISK, 0), (DEFAULT_RISK, 1),
                                                       (DEFAULT_RISK, 2)]
    learned = paired_case_statistics(kept, PLAIN)[("a", DEFAULT_RISK)]
    assert (learned.n_pairs, learned.n_seeds) == (1, 1)  # only seed 1, where neither run stalled
    table = markdown_table(rows(), case_rows(rows()), list(METHODS), baseline=PLAIN, highlight=DEFAULT_RISK)
    assert "Runs that did not learn a region" in table and f"| {PLAIN} | 0/3 | 0/3 |" in table
    assert "on the seeds where neither run stalled" in table and "| +2.0 seeds [+2.0, +2.0] n=3 |" in table
    assert learned.verdict() == "one seed: no CI across training runs" and math.isnan(learned.seed_low)


def test_default_chosen_on_validation_not_test():
    data = rows()
    for row in list(data):  # the sweep variant wins on validation but loses on test
        if row["method"] == DEFAULT_RISK:
            data.append({**row, "method": "linear_s2", "val_dice": row["val_dice"] + 0.1, "test_dice": 0.0})
    assert choose_default(data) == "linear_s2"


def test_region_table_and_mean_dice_ci():
    cases = case_rows(rows())
    table = region_table(cases, [(DEFAULT_RISK, PLAIN)])
    assert (f"| {DEFAULT_RISK} - {PLAIN} | a | ET | +2.0 seeds [+2.0, +2.0] | +2.0 .. +2.0 (seed 0 carries +0.0) | "
            "gain (seed CI above 0) |") in table
    assert f"| {DEFAULT_RISK} - {PLAIN} | b | WT | +0.0 seeds [" in table
    mean, low, high = mean_dice_with_ci(cases)[("a", PLAIN)]
    assert mean == pytest.approx(0.675) and low < mean < high  # seeds resampled: seed means 0.6375, 0.7375, 0.6875
    assert 0.6 < low and high < 0.75


def test_comparison_figures_written(tmp_path):
    png = plot_method_comparison(case_rows(rows()), list(METHODS), tmp_path / "fig.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    forest = plot_paired_differences(case_rows(rows()), list(METHODS), PLAIN, tmp_path / "paired.png")
    assert forest.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and forest.stat().st_size > 10_000
    curve = plot_few_shot_curve(case_rows(rows()), {2: "a", 4: "b", 8: "missing"}, list(METHODS), tmp_path / "c.png")
    assert curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and curve.stat().st_size > 10_000
    seeds = plot_runs_against_baseline(rows(), DEFAULT_RISK, PLAIN, tmp_path / "seeds.png")
    assert seeds.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and seeds.stat().st_size > 10_000


def test_grid_orders_cells_so_each_source_model_is_trained_once():
    profile = PROFILES["quick"]
    cells = grid(profile)
    assert len(cells) == len(profile.scenarios) * len(profile.methods) * len(profile.seeds)
    keys = [(c.scenario.name, c.seed) for c in cells]
    # the cells sharing a source model (same scenario and seed) are adjacent
    assert all(keys.index(k) + len(profile.methods) > i for i, k in enumerate(keys))


def test_unknown_grid_entries_raise():
    from transrisk_components.experiments import Profile

    with pytest.raises(ValueError, match="unknown"):
        grid(Profile(scenarios=("nope",), methods=(PLAIN,), seeds=(0,)))


def _cases_with_seed_shifts(shifts: dict[int, float], n_cases: int = 16) -> list[dict]:
    """Scenario "s", ET only: plain fine-tuning at 0.5 (+ a little by case), the risk map ``shifts[seed]`` above it on
    every case of that seed (+ a little by case, the same in every seed)."""
    cases = []
    for seed, shift in shifts.items():
        for k in range(n_cases):
            base = 0.5 + 0.01 * (k % 4)
            for method, dice in ((PLAIN, base), (DEFAULT_RISK, base + shift + 0.002 * (k % 3))):
                cases.append({"scenario": "s", "method": method, "seed": seed, "case_id": f"c{k}", "region": "ET",
                              "dice": dice})
    return cases


def test_a_gain_across_cases_but_not_across_seeds_is_not_called_a_gain():
    """Five seeds whose mean differences disagree (+30 ... -10 points), 16 cases each: every pair but a few gains
    the same within a seed, yet the seed CI contains 0 and the verdict says so."""
    cases = _cases_with_seed_shifts({0: 0.30, 1: 0.10, 2: 0.05, 3: -0.05, 4: -0.10})
    stat = paired_case_statistics(cases, PLAIN)[("s", DEFAULT_RISK)]
    assert stat.seed_low < 0 < stat.seed_high and (stat.n_seeds, stat.n_pairs) == (5, 80)
    assert stat.verdict().startswith("no detectable difference (seed CI half-width")
    assert stat.half_width == pytest.approx((stat.seed_high - stat.seed_low) / 2)


def test_the_seed_ci_has_no_width_only_when_every_seed_gains_the_same():
    """Differences that vary by case but not by seed: a zero-width seed CI; one seed 0.1 points off: a CI with
    width, around the mean."""
    same = paired_case_statistics(_cases_with_seed_shifts({0: 0.03, 1: 0.03, 2: 0.03, 3: 0.03}), PLAIN)
    same = same[("s", DEFAULT_RISK)]
    assert same.seed_high - same.seed_low == 0 and same.seed_low == same.mean
    off = paired_case_statistics(_cases_with_seed_shifts({0: 0.03, 1: 0.03, 2: 0.031, 3: 0.03}), PLAIN)
    off = off[("s", DEFAULT_RISK)]
    assert off.seed_high - off.seed_low > 0 and off.seed_low <= off.mean <= off.seed_high
    assert same.mean - 1e-12 <= off.seed_low < off.seed_high <= same.mean + 0.001  # within the seed means' range


def test_leave_one_seed_out_names_the_seed_that_carries_a_difference():
    """Three seeds level with plain fine-tuning, seed 107 +40 points: the mean +10 rests on seed 107 alone, and the
    leave-one-seed-out line of every table says so; with every seed level, no seed carries anything."""
    cases = _cases_with_seed_shifts({103: 0.0, 104: 0.0, 107: 0.40, 110: 0.0})
    stat = paired_case_statistics(cases, PLAIN)[("s", DEFAULT_RISK)]
    seed, carried = stat.carried_most
    # each seed's mean: its shift + 0.001875 (the cases' 0.002 * (k % 3)); mean 0.101875, without 107 0.001875
    assert seed == 107 and carried == pytest.approx(0.10)
    without = dict(stat.without_seed)
    assert without[107] == pytest.approx(0.001875) and without[103] == pytest.approx(0.40 / 3 + 0.001875)
    rows = [{"scenario": "s", "method": m, "seed": s, "val_dice": 0.5, "test_dice": 0.5}
            for m in (PLAIN, DEFAULT_RISK) for s in (103, 104, 107, 110)]
    table = markdown_table(rows, cases, list(METHODS), baseline=PLAIN, highlight=DEFAULT_RISK)
    assert "leave-one-seed-out: +0.2 .. +13.5 (seed 107 carries +10.0)." in table
    assert f"| {DEFAULT_RISK} | +0.2 .. +13.5 (seed 107 carries +10.0) |" in table
    assert "| +0.2 .. +13.5 (seed 107 carries +10.0) |" in region_table(cases, [(DEFAULT_RISK, PLAIN)])
    level = _cases_with_seed_shifts({103: 0.05, 104: 0.05, 107: 0.05, 110: 0.05})
    assert paired_case_statistics(level, PLAIN)[("s", DEFAULT_RISK)].carried_most[1] == pytest.approx(0.0, abs=1e-12)
    table = markdown_table(rows, level, list(METHODS), baseline=PLAIN, highlight=DEFAULT_RISK)
    assert "leave-one-seed-out: +5.2 .. +5.2 (seed 103 carries +0.0)." in table


def test_no_case_level_p_value_is_left_in_the_tables():
    table = markdown_table(rows(), case_rows(rows()), list(METHODS), baseline=PLAIN, highlight=DEFAULT_RISK)
    table += region_table(case_rows(rows()), [(DEFAULT_RISK, PLAIN)])
    assert "seeds [" in table and "Leave one seed out" in table
    assert not re.search(r"\bp ?[=<]|p-value|Wilcoxon|over the pairs\]", table, re.IGNORECASE)


def test_methods_are_read_by_id_or_by_the_label_older_reports_hold():
    assert method_id(PLAIN) == PLAIN and method_id("plain fine-tuning") == PLAIN
    assert method_id("sweep: linear s=8.0") == "linear_s8" and method_id("safe transfer, raced") == "safe_raced"
    assert method_label("better_of_plain_scratch") == "better of plain and scratch (test oracle)"
    with pytest.raises(ValueError, match="unknown method 'plain fine tuning'"):
        method_id("plain fine tuning")


@pytest.mark.parametrize("results", sorted(p.relative_to(REPO).as_posix() for p in REPO.glob("docs/results/**/results.csv")
                                           if (p.parent / "results_per_case.csv").is_file()))
def test_every_committed_report_reads_with_method_ids(results):
    rows, cases = load_results(REPO / results)
    assert rows and cases
    known = set(METHODS) | set(DERIVED_METHODS)
    assert {r["method"] for r in rows} <= known and {c["method"] for c in cases} <= known
    keepable = set(METHODS) | {m.id for m in DERIVED_METHODS.values() if m.group in ("ensemble", "composite")}
    assert {r["chosen"] for r in rows if r.get("chosen")} <= keepable, "a rule keeps a trained cell or a model of them"


def test_the_table_command_re_makes_a_committed_report_from_its_labelled_csvs(tmp_path):
    """``reproduce.py table`` over a report whose CSVs hold labels (and safe-transfer rows with ``chosen``): the
    table shows labels, and the CSVs are only read."""
    committed = REPO / "docs" / "results" / "confirm" / "scenarios_t1ce_fewshot2"
    for name in ("results.csv", "results_per_case.csv"):
        shutil.copyfile(committed / name, tmp_path / name)
    subprocess.run([sys.executable, str(REPO / "scripts" / "reproduce.py"), "table", str(tmp_path / "results.csv")],
                   check=True, capture_output=True, cwd=REPO)
    for name in ("results.csv", "results_per_case.csv"):
        assert (tmp_path / name).read_bytes() == (committed / name).read_bytes()
    table = (tmp_path / "table.md").read_text()
    assert f"| {method_label(DEFAULT_RISK)} |" in table and f"| {method_label(SCRATCH)} |" in table
    assert f"| {method_label(SAFE)} - {method_label(PLAIN)} | fets_t1_to_t1ce | ET |" in table
    assert (tmp_path / "figures" / "safe_vs_better_of_plain_and_scratch.png").is_file()
    assert "Leave one seed out" in table and "- fets_t1_to_t1ce: safe - " in table
    assert not re.search(r"\bp ?[=<]|Wilcoxon", table)
