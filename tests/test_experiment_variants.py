"""The risk-map variants of the experiment grid: their overrides, where they run, the study profile and the
selection rule that picks the bundles' default from validation Dice."""

from __future__ import annotations

from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from experiments import (
    DEFAULT_RISK,
    HEADLINE_METHODS,
    LOCATION_LEEP,
    METHODS,
    PLAIN,
    PROFILES,
    SCENARIOS,
    STUDY_VARIANTS,
    SWEEP_STRENGTHS,
    Profile,
    choose_default,
    grid,
    selection_scores,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("bundle", ["fets", "iseg"])
def test_every_method_overrides_config_ids_the_bundle_has(bundle: str) -> None:
    """A misspelt id (``risk#ce_voxel``) would silently add an unused key instead of selecting the variant."""
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.json"))
    for method in METHODS.values():
        for key in method.overrides:
            assert key in parser, f"{method.name}: {bundle} train.json has no config id {key}"


def test_variants_and_sweep_are_listed() -> None:
    variants = [m for m in METHODS if METHODS[m].group == "variant"]
    assert len(variants) == 5 and LOCATION_LEEP in variants
    for scheme in ("linear", "exponential"):
        assert [METHODS[f"sweep: {scheme} s={s}"].overrides["risk#strength"] for s in SWEEP_STRENGTHS] == [0, 1, 2, 4, 8]
    assert METHODS[LOCATION_LEEP].overrides["risk#map"] == "location"


@pytest.mark.parametrize("bundle", ["fets", "iseg"])
def test_the_bundles_default_is_the_sweep_point_the_study_leaves_out(bundle: str) -> None:
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.json"))
    default = {key: parser[key] for key in ("risk#scheme", "risk#strength")}
    assert default == METHODS["sweep: exponential s=2.0"].overrides
    assert "sweep: exponential s=2.0" not in STUDY_VARIANTS


def test_location_map_is_left_out_of_datasets_that_are_not_co_registered() -> None:
    cells = grid(Profile(scenarios=("iseg_t1_to_t2", "fets_t1_to_t1ce"), methods=(PLAIN, LOCATION_LEEP), seeds=(0,)))
    assert [(c.scenario.name, c.method.name) for c in cells] == [
        ("iseg_t1_to_t2", PLAIN), ("fets_t1_to_t1ce", PLAIN), ("fets_t1_to_t1ce", LOCATION_LEEP)
    ]


def test_study_profile_compares_every_variant_on_fets_with_the_quick_settings() -> None:
    study, quick = PROFILES["study"], PROFILES["quick"]
    assert {SCENARIOS[s].bundle for s in study.scenarios} == {"fets"} and 2 <= len(study.scenarios) <= 3
    assert set(HEADLINE_METHODS) <= set(study.methods)
    candidates = {m for m in METHODS if METHODS[m].group in ("variant", "sweep")}
    assert candidates - set(STUDY_VARIANTS) == {"sweep: exponential s=2.0", "sweep: exponential s=0.0"}  # repeats
    assert study.overrides == quick.overrides and study.phantoms == quick.phantoms
    # the 2 h budget on 2 CPU cores: ~50 s per source model, ~60 s per fine-tuning cell
    minutes = (len(study.scenarios) * len(study.seeds) * 50 + len(grid(study)) * 60) / 60
    assert minutes <= 110


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
    rows += [_row(s, "sweep: exponential s=8.0", k, 0.704, test=1.0) for s in ("a", "b") for k in (0, 1)]
    assert choose_default(rows) == DEFAULT_RISK  # within half a Dice point: a tie, the default is simpler
    rows += [_row(s, "risk-weighted Dice", k, 0.720) for s in ("a", "b") for k in (0, 1)]
    assert choose_default(rows) == "risk-weighted Dice"
    assert choose_default([_row("a", PLAIN, 0, 0.9)]) is None  # plain fine-tuning is no candidate
