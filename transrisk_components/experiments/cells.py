"""The grid's cells: one (scenario, method, seed) each, with its folders and the config overrides it runs with.

Layout of an experiment folder (``root``)::

    sources/<scenario>/seed<k>/source.pt         source model, shared by every method of that scenario and seed
    risk_maps/<scenario>/seed<k>/<key>/          risk-map cache (the key covers the options)
    cells/<scenario>/<method id>/seed<k>/        the cell's checkpoints, splits, metrics and result.json

Each cell is its own bundle root (``bundle_root`` is the cell folder), so the bundle's run lock guards the cell's
outputs. The grid runs the bundles of the repository the package lives in (:data:`REPO_ROOT`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transrisk_components.experiments.catalogue import METHODS, SCENARIOS, GridScenario, Method
from transrisk_components.experiments.profiles import Profile

__all__ = ["REPO_ROOT", "Cell", "bundle_config", "cell_overrides", "grid", "source_checkpoint"]

#: The repository that holds this package and the bundles the grid runs (``bundles/<name>/configs``).
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Cell:
    """One run of the grid: fine-tune with ``method`` on ``scenario``'s target, seeded with ``seed``."""

    scenario: GridScenario
    method: Method
    seed: int

    def folder(self, root: Path) -> Path:
        """``<root>/cells/<scenario>/<method id>/seed<k>``."""
        return root / "cells" / self.scenario.name / self.method.id / f"seed{self.seed}"


def grid(profile: Profile) -> list[Cell]:
    """The cells of ``profile`` in run order (scenario, seed, method), so a source model is trained once; a method
    is left out of the scenarios whose bundle it does not apply to (:attr:`Method.bundles`).

    Raises:
        ValueError: a scenario or method id of the profile is not in the catalogue.
    """
    unknown = [s for s in profile.scenarios if s not in SCENARIOS] + [m for m in profile.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown scenarios/methods {unknown}; known: {sorted(SCENARIOS)} / {sorted(METHODS)}")
    return [
        Cell(SCENARIOS[s], METHODS[m], seed)
        for s in profile.scenarios
        for seed in profile.seeds
        for m in profile.methods
        if METHODS[m].bundles is None or SCENARIOS[s].bundle in METHODS[m].bundles
    ]


def bundle_config(bundle: str, name: str) -> str:
    """Path of ``bundles/<bundle>/configs/<name>.json`` in :data:`REPO_ROOT`.

    Raises:
        FileNotFoundError: the repository has no such config (the package was installed without its checkout).
    """
    path = REPO_ROOT / "bundles" / bundle / "configs" / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the experiment grid runs the bundles of the repository it is installed from; "
            f"install the package from a checkout (pip install -e .)"
        )
    return str(path)


def source_checkpoint(cell: Cell, root: Path) -> Path:
    """``<root>/sources/<scenario, or the one it takes its source from>/seed<k>/source.pt``."""
    return root / "sources" / (cell.scenario.source_from or cell.scenario.name) / f"seed{cell.seed}" / "source.pt"


def cell_overrides(cell: Cell, root: Path, profile: Profile, dataset_dirs: Mapping[str, str | None]) -> dict[str, Any]:
    """Every config override of one cell: outputs under ``root``, scenario, method, seed, profile settings.

    Args:
        dataset_dirs: bundle name -> dataset folder (``None``: the bundle's default phantom).
    """
    folder = cell.folder(root)
    shared = f"{cell.scenario.name}/seed{cell.seed}"
    overrides: dict[str, Any] = {
        "bundle_root": str(folder),  # the run lock and the clean-up of killed writes cover this cell alone
        "seed": cell.seed,
        "ckpt_dir": str(folder / "models"),
        "output_dir": str(folder / "eval"),
        "log_dir": str(folder / "runs"),
        "source_ckpt": str(source_checkpoint(cell, root)),
        "risk_dir": str(root / "risk_maps" / shared),
        "progress": False,
        **profile.overrides,
        **cell.scenario.overrides,
        **cell.method.overrides,
    }
    if dataset_dirs.get(cell.scenario.bundle):
        overrides["dataset_dir"] = dataset_dirs[cell.scenario.bundle]
    return overrides
