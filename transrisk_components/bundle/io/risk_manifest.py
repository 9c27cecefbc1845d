"""Reading the risk stage's output: one cache folder's ``manifest.json`` and the maps it names.

The risk stage (:mod:`transrisk_components.bundle.stages.risk`) writes, per cache key, a folder of risk maps and a
``manifest.json`` naming them (relative to the folder) with the pooled LEEP statistics and the per-class table. The
fine-tuning stage reads it through :class:`RiskManifest`: the training cases gain their map (:class:`TrainingCases`),
and :class:`~transrisk_components.bundle.engine.source_weights.SourceWeights` reads the dead classes and the joint
``P(y, z)`` from it. The stages meet only through this file, whose path the run passes to the fine-tuning config
(``risk_manifest``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from transrisk_components.method.transferability import dead_class_names

__all__ = ["MANIFEST", "RiskManifest", "TrainingCases"]

#: The manifest's file name inside a cache folder.
MANIFEST = "manifest.json"


class RiskManifest:
    """One risk-map cache folder's manifest, read on first use.

    Args:
        path: the ``manifest.json``.

    Raises (on first use):
        FileNotFoundError: no manifest at ``path`` (the risk stage has not run for these settings).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @cached_property
    def data(self) -> dict[str, Any]:
        """The manifest's content (see :meth:`transrisk_components.bundle.stages.risk.RiskStage.run`)."""
        if not self.path.is_file():
            raise FileNotFoundError(
                f"risk maps not found: {self.path} does not exist. The fine-tuning stage reads the maps the risk stage "
                "wrote; run 'training' (or 'risk_map'), which computes them first"
            )
        return json.loads(self.path.read_text(encoding="utf-8"))

    def map_path(self, case_id: str) -> str:
        """The path of ``case_id``'s risk map.

        Raises:
            KeyError: the manifest has no map of ``case_id`` (it was made for other training cases).
        """
        cases = self.data["cases"]
        if case_id not in cases:
            raise KeyError(f"{self.path} has no risk map of case {case_id}: its maps are of {sorted(cases)}")
        return str(self.path.parent / cases[case_id]["risk"])

    def foreground_voxels(self, case_id: str) -> int:
        """``case_id``'s whole-case foreground count (the foreground-normalised loss's normaliser)."""
        return int(self.data["cases"][case_id]["foreground_voxels"])

    @property
    def classes(self) -> dict[str, dict[str, Any]]:
        """The per-class table: name -> ``{"index", "transferability", "prior", "information"}``."""
        return self.data["classes"]

    def joint(self) -> torch.Tensor:
        """The pooled LEEP joint ``P(y, z)``, float64 ``[Ct, Cs]``."""
        return torch.tensor(self.data["joint"], dtype=torch.float64)

    def dead_class_names(self, margin: float) -> list[str]:
        """Target classes the source gives no information about at ``margin`` (index order)."""
        return dead_class_names(self.classes, margin)

    def dead_class_indices(self, margin: float) -> list[int]:
        """Output channels of :meth:`dead_class_names`."""
        return [self.classes[name]["index"] for name in self.dead_class_names(margin)]

    def foreground_transfers(self, margin: float) -> bool:
        """Whether at least one present foreground class (index > 0) is not dead."""
        dead = set(self.dead_class_names(margin))
        return any(v["index"] > 0 and v["prior"] > 0 and name not in dead for name, v in self.classes.items())


class TrainingCases(Sequence):
    """The fine-tuning datalist: the target training cases, each with its risk map when the map is used.

    Entries are ``{**case, "risk": path, "foreground_voxels": count}`` with a manifest, the cases themselves without.
    The length is known at once and the manifest is read on first access to an entry, so a config can build its
    dataset and trainer before the risk stage ran (MONAI's ``check_properties`` does).

    Args:
        cases: the target training cases (``{"case_id", "image", "label"}``).
        manifest: the risk stage's ``manifest.json`` of these cases, or ``None`` (fine-tuning without the map).
    """

    def __init__(self, cases: Sequence[Mapping[str, Any]], manifest: str | os.PathLike | None) -> None:
        self.cases = [dict(c) for c in cases]
        self.manifest = None if manifest is None else RiskManifest(manifest)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int | slice) -> dict | list[dict]:  # type: ignore[override]
        if isinstance(index, slice):
            return [self._entry(c) for c in self.cases[index]]
        return self._entry(self.cases[index])

    def _entry(self, case: dict) -> dict:
        if self.manifest is None:
            return dict(case)
        case_id = case["case_id"]
        return {**case, "risk": self.manifest.map_path(case_id), "foreground_voxels": self.manifest.foreground_voxels(case_id)}
