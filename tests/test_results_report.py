"""Reports of the experiment grid, from a hand-made results CSV."""

from __future__ import annotations


import pytest

from experiments import DEFAULT_RISK, METHODS, PLAIN, PROFILES, choose_default, grid
from transrisk_components.reporting.results import (
    load_results_csv,
    markdown_table,
    paired_differences,
    plot_method_comparison,
    summarise_results,
    write_results_csv,
)


def rows():
    """Two scenarios x two methods x three seeds; risk gains 2 points on 'a' and loses 1 point on 'b'."""
    out = []
    for seed, base in enumerate([0.60, 0.70, 0.65]):
        for scenario, gain in (("a", 0.02), ("b", -0.01)):
            for method, delta in ((PLAIN, 0.0), (DEFAULT_RISK, gain)):
                out.append({"scenario": scenario, "kind": "k", "bundle": "fets", "method": method, "group": "main",
                            "seed": seed, "val_dice": base + delta / 2, "test_dice": base + delta, "test_hd95": 3.0})
    return out


def test_csv_round_trip(tmp_path):
    path = write_results_csv(rows(), tmp_path / "results.csv")
    loaded = load_results_csv(path)
    assert len(loaded) == 12
    assert loaded[0]["test_dice"] == pytest.approx(0.60)
    assert loaded[0]["seed"] == 0


def test_summary_and_paired_differences():
    stats = summarise_results(rows())
    mean, std, n = stats[("a", PLAIN)]
    assert (mean, n) == (pytest.approx(0.65), 3) and std == pytest.approx(0.05)
    diff = paired_differences(rows(), PLAIN)
    assert diff[("a", DEFAULT_RISK)][0] == pytest.approx(0.02)
    assert diff[("a", DEFAULT_RISK)][1] == pytest.approx(0.0, abs=1e-12)
    assert diff[("b", DEFAULT_RISK)][0] == pytest.approx(-0.01)
    assert ("a", PLAIN) not in diff


def test_table_states_where_risk_map_does_not_win():
    table = markdown_table(rows(), list(METHODS), baseline=PLAIN, highlight=DEFAULT_RISK)
    assert "| plain fine-tuning | 65.0 ± 5.0 | 65.0 ± 5.0 |" in table
    assert "+2.0 ± 0.0" in table and "-1.0 ± 0.0" in table
    assert "- a: risk-weighted +2.0 ± 0.0 points over 3 seeds: beats plain fine-tuning" in table
    assert "- b: risk-weighted -1.0 ± 0.0 points over 3 seeds: does NOT beat plain fine-tuning" in table


def test_default_chosen_on_validation_not_test():
    data = rows()
    for row in list(data):  # the sweep variant wins on validation but loses on test
        if row["method"] == DEFAULT_RISK:
            data.append({**row, "method": "sweep: linear s=2.0", "val_dice": row["val_dice"] + 0.1, "test_dice": 0.0})
    assert choose_default(data) == "sweep: linear s=2.0"


def test_comparison_figure_written(tmp_path):
    png = plot_method_comparison(rows(), list(METHODS), tmp_path / "fig.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_grid_orders_cells_so_each_source_model_is_trained_once():
    profile = PROFILES["quick"]
    cells = grid(profile)
    assert len(cells) == len(profile.scenarios) * len(profile.methods) * len(profile.seeds)
    keys = [(c.scenario.name, c.seed) for c in cells]
    # the cells sharing a source model (same scenario and seed) are adjacent
    assert all(keys.index(k) + len(profile.methods) > i for i, k in enumerate(keys))


def test_unknown_grid_entries_raise():
    from experiments import Profile

    with pytest.raises(ValueError, match="unknown"):
        grid(Profile(scenarios=("nope",), methods=(PLAIN,), seeds=(0,)))
