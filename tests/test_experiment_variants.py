"""The risk-map variants of the experiment grid: their overrides, where they run, the study profile and the
selection rule that picks the bundles' default from validation Dice."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from transrisk_components.experiments import (
    DEFAULT_RISK,
    DEFAULT_SWEEP_POINT,
    DERIVED_METHODS,
    HEADLINE_METHODS,
    LINEAR_STRENGTHS_ABOVE_SWEEP,
    LOCATION_LEEP,
    METHODS,
    PLAIN,
    PROFILES,
    RISK_DICE,
    RISK_SAMPLING,
    SCENARIOS,
    STUDY_VARIANTS,
    SWEEP_STRENGTHS,
    VOXEL_MEAN_NORM,
    Profile,
    choose_default,
    grid,
    method_id,
    method_label,
    parallel_schedule,
    selection_scores,
    sweep_id,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("bundle", ["fets", "iseg"])
def test_every_method_overrides_config_ids_the_bundle_has(bundle: str) -> None:
    """A misspelt id (``risk#ce_voxel``) would silently add an unused key instead of selecting the variant."""
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.json"))
    for method in METHODS.values():
        for key in method.overrides:
            assert key in parser, f"{method.id}: {bundle} train.json has no config id {key}"


def test_method_ids_are_short_folder_names_and_labels_are_unique() -> None:
    """Ids name the cell folders and fill the ``method`` column; labels are what reports show (and older reports
    hold), so each label must lead back to one id."""
    methods = [*METHODS.values(), *DERIVED_METHODS.values()]
    assert all(re.fullmatch(r"[a-z][a-z0-9_]{1,23}", m.id) for m in methods), [m.id for m in methods]
    assert len({m.label for m in methods}) == len(methods) == len({m.id for m in methods})
    assert all(method_id(m.label) == m.id == method_id(m.id) and method_label(m.id) == m.label for m in methods)


def test_variants_and_sweep_are_listed() -> None:
    variants = [m for m in METHODS if METHODS[m].group == "variant"]
    assert len(variants) == 5 and LOCATION_LEEP in variants
    for scheme in ("linear", "exponential"):
        assert [METHODS[sweep_id(scheme, s)].overrides["risk#strength"] for s in SWEEP_STRENGTHS] == [0, 1, 2, 4, 8]
        assert [METHODS[sweep_id(scheme, s)].label for s in SWEEP_STRENGTHS[:2]] == [f"sweep: {scheme} s=0.0",
                                                                                  f"sweep: {scheme} s=1.0"]
    assert METHODS[LOCATION_LEEP].overrides["risk#map"] == "location"


@pytest.mark.parametrize("bundle", ["fets", "iseg"])
def test_the_bundles_default_is_the_rules_pick_and_the_study_leaves_it_out(bundle: str) -> None:
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.json"))
    default = {key: parser[key] for key in ("risk#scheme", "risk#strength")}
    assert default == METHODS[DEFAULT_SWEEP_POINT].overrides == {"risk#scheme": "linear", "risk#strength": 8.0}
    assert DEFAULT_SWEEP_POINT not in STUDY_VARIANTS and "exponential_s2" in STUDY_VARIANTS
    # the control run's pick (the paper's per-case foreground size); the voxel mean, the old default, is a variant
    assert parser["risk#ce_denominator"] == "foreground"
    assert METHODS[VOXEL_MEAN_NORM].overrides == {"risk#ce_denominator": "voxels"} and VOXEL_MEAN_NORM in STUDY_VARIANTS


def test_location_map_is_left_out_of_datasets_that_are_not_co_registered() -> None:
    cells = grid(Profile(scenarios=("iseg_t1_to_t2", "fets_t1_to_t1ce"), methods=(PLAIN, LOCATION_LEEP), seeds=(0,)))
    assert [(c.scenario.name, c.method.id) for c in cells] == [
        ("iseg_t1_to_t2", PLAIN), ("fets_t1_to_t1ce", PLAIN), ("fets_t1_to_t1ce", LOCATION_LEEP)
    ]


def test_study_profile_compares_every_variant_on_fets_with_the_quick_settings() -> None:
    study, quick = PROFILES["study"], PROFILES["quick"]
    assert {SCENARIOS[s].bundle for s in study.scenarios} == {"fets"} and 2 <= len(study.scenarios) <= 3
    assert set(HEADLINE_METHODS) <= set(study.methods)
    candidates = {m for m in METHODS if METHODS[m].group in ("variant", "sweep")}
    assert candidates - set(STUDY_VARIANTS) == {DEFAULT_SWEEP_POINT, "exponential_s0"}  # repeats
    assert study.overrides == quick.overrides and study.phantoms == quick.phantoms
    assert len(study.seeds) >= 5 and len(grid(study)) == len(study.scenarios) * len(study.seeds) * len(study.methods)


def test_refine_profile_tries_the_strengths_above_the_default_and_reuses_the_quick_cells() -> None:
    refine, study, quick = PROFILES["refine"], PROFILES["study"], PROFILES["quick"]
    above = [sweep_id("linear", s) for s in LINEAR_STRENGTHS_ABOVE_SWEEP]
    assert min(LINEAR_STRENGTHS_ABOVE_SWEEP) > max(SWEEP_STRENGTHS) and set(above) <= set(STUDY_VARIANTS)
    assert set(refine.methods) == {*HEADLINE_METHODS, RISK_DICE, RISK_SAMPLING, *above}
    # same scenarios, seeds and settings: the headline cells are the quick profile's (same fingerprints)
    assert (refine.scenarios, refine.seeds) == (study.scenarios, study.seeds)
    assert set(refine.scenarios) <= set(quick.scenarios) and refine.seeds == quick.seeds
    assert refine.overrides == quick.overrides and refine.phantoms == quick.phantoms


def test_long_profiles_fine_tune_four_times_as_long_on_quicks_sources() -> None:
    long, long10, long15, quick = PROFILES["long"], PROFILES["long10"], PROFILES["long15"], PROFILES["quick"]
    assert long.methods == long10.methods == long15.methods == (PLAIN, DEFAULT_RISK)
    assert long.overrides == long10.overrides == long15.overrides == {**quick.overrides, "max_epochs": 160, "val_interval": 20}
    # the source models' settings are quick's, so the same seeds train the same sources
    assert (long.scenarios, long.seeds, long.phantoms) == (quick.scenarios, quick.seeds, quick.phantoms)
    assert set(long10.scenarios) <= set(long.scenarios) and set(long.seeds) < set(long10.seeds)
    assert long15.scenarios == long.scenarios and set(long10.seeds) < set(long15.seeds) == set(range(15))


def _row(scenario: str, method: str, seed: int, val: float, test: float = 0.5) -> dict:
    return {"scenario": scenario, "method": method, "group": METHODS[method].group, "seed": seed,
            "val_dice": val, "test_dice": test}


def test_selection_scores_every_candidate_on_the_scenarios_all_of_them_ran() -> None:
    """The location-wise map runs on FeTS only: it is compared with the others on the FeTS scenario alone,
    where it wins, although the default's mean over all its scenarios is higher."""
    rows = [_row("fets", DEFAULT_RISK, 0, 0.60), _row("iseg", DEFAULT_RISK, 0, 0.90), _row("fets", LOCATION_LEEP, 0, 0.65)]
    assert choose_default(rows) == LOCATION_LEEP
    assert selection_scores(rows) == {DEFAULT_RISK: pytest.approx(0.60), LOCATION_LEEP: pytest.approx(0.65)}


def test_selection_breaks_ties_for_the_simpler_candidate_and_never_reads_test_dice() -> None:
    rows = [_row(s, DEFAULT_RISK, k, 0.700, test=0.0) for s in ("a", "b") for k in (0, 1)]
    rows += [_row(s, "exponential_s8", k, 0.704, test=1.0) for s in ("a", "b") for k in (0, 1)]
    assert choose_default(rows) == DEFAULT_RISK  # within half a Dice point: a tie, the default is simpler
    rows += [_row(s, RISK_DICE, k, 0.720) for s in ("a", "b") for k in (0, 1)]
    assert choose_default(rows) == RISK_DICE
    assert choose_default([_row("a", PLAIN, 0, 0.9)]) is None  # plain fine-tuning is no candidate


def test_the_parallel_schedule_trains_each_source_once_and_gives_each_risk_cache_one_writer() -> None:
    cells = grid(PROFILES["study"])
    wave1, wave2 = parallel_schedule(cells)
    # one cell per source model: T1 -> T1ce's (borrowed by the 2-shot scenario) and ED -> ET's, per seed
    assert sorted((g[0].scenario.name, g[0].seed) for g in wave1) == sorted(
        (s, k) for s in ("fets_t1_to_t1ce", "fets_ed_to_et") for k in PROFILES["study"].seeds
    )
    assert all(len(g) == 1 and g[0].method.id == PLAIN for g in wave1)
    # then one group per scenario and seed (the risk-map cache's folder)
    assert all(len({(c.scenario.name, c.seed) for c in g}) == 1 for g in wave2)
    assert len(wave2) == len(PROFILES["study"].scenarios) * len(PROFILES["study"].seeds)
    scheduled = [c for g in wave1 + wave2 for c in g]
    assert len(scheduled) == len(cells) and all(c in scheduled for c in cells)
