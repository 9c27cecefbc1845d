"""Shared pytest fixtures.

Data-layer fixtures (prefix ``data_``): small session-scoped phantoms and the shared real-format
specimens under ``../shared/fixtures`` next to the repository root. ``fets_phantom``: the 12-subject FeTS phantom that
the bundle tests of every module share (generated once per session; no test changes its files).
"""

from __future__ import annotations

from pathlib import Path

import pytest

DATA_PHANTOM_SHAPE = (32, 32, 32)


@pytest.fixture(scope="session")
def data_shared_fixtures() -> Path:
    """``<repo>/../shared/fixtures``; skips the test when that folder is absent (CI clones it beside the repo)."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
    if not path.is_dir():
        pytest.skip(f"shared real-format fixtures not found at {path} (expected ../shared beside the repository)")
    return path


@pytest.fixture(scope="session")
def data_fets_phantom(tmp_path_factory) -> Path:
    """FeTS look-alike root: 11 subjects (ids 001-010, 012), 3 institutions, 32^3 voxels, seed 0."""
    from transrisk_components.data.phantom.fets import make_fets_phantom

    return make_fets_phantom(tmp_path_factory.mktemp("fets"), subjects=11, seed=0, shape=DATA_PHANTOM_SHAPE)


@pytest.fixture(scope="session")
def data_fets_phantom_9(tmp_path_factory) -> str:
    """FeTS look-alike root with 9 subjects (one atlas grid for every subject), 32^3 voxels, seed 0; read-only."""
    from transrisk_components.data.phantom.fets import make_fets_phantom

    return str(make_fets_phantom(tmp_path_factory.mktemp("fets9"), subjects=9, seed=0, shape=DATA_PHANTOM_SHAPE))


@pytest.fixture(scope="session")
def fets_phantom(tmp_path_factory) -> str:
    """FeTS look-alike root with 12 subjects in three institutions, 32^3 voxels, seed 0, shared by the bundle tests
    of every module: read-only (a module whose tests change its files makes a phantom of its own)."""
    from transrisk_components.data.phantom.fets import make_fets_phantom

    return str(make_fets_phantom(tmp_path_factory.mktemp("fets12"), subjects=12, seed=0, shape=DATA_PHANTOM_SHAPE))


@pytest.fixture()
def flair_cases(data_fets_phantom_9: str, tmp_path: Path) -> list[dict]:
    """Three FeTS target training cases (FLAIR) of ``data_fets_phantom_9``, split as the bundles split them."""
    from transrisk_components.data.scenario import Scenario

    scenario = Scenario(
        dataset="fets", dataset_dir=data_fets_phantom_9, output_dir=str(tmp_path), source_modality="t1",
        target_modality="flair", source_task="multiclass", target_task="multiclass", num_target_train=3,
        num_target_val=1, num_target_test=1, seed=0,
    )
    return scenario.split("target_train")


@pytest.fixture(scope="session")
def data_iseg_phantom(tmp_path_factory) -> Path:
    """iSeg look-alike root: subjects 1-12, 1-10 labelled, 32^3 voxels, seed 0."""
    from transrisk_components.data.phantom.iseg import make_iseg_phantom

    return make_iseg_phantom(tmp_path_factory.mktemp("iseg"), subjects=12, seed=0, shape=DATA_PHANTOM_SHAPE)
