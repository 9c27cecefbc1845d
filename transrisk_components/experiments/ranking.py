"""The source-ranking study's runs: do the bundle's rankings of candidate source models predict which fine-tunes best?

For every target modality (multiclass task) and seed of a :class:`RankingStudy`, one source model per candidate
(:class:`StudyCandidate`: a source modality and training length, or any other source-stage settings) is trained on
the same source cases (shared between the targets), fine-tuned plainly on the target, and scored by the bundle's
``rank_sources`` over the target training cases (LEEP and GBC). The source's own validation Dice (on the target-val
cases' images of the source's modality) is the simple ranker they are compared with
(:mod:`transrisk_components.experiments.ranking_report`).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transrisk_components.experiments.catalogue import METHODS, PLAIN, GridScenario
from transrisk_components.experiments.cells import Cell, bundle_config, cell_overrides, source_checkpoint
from transrisk_components.experiments.profiles import PROFILES, Profile
from transrisk_components.experiments.runner import mean_over_regions, run_cell, run_workflow
from transrisk_components.utils.io import atomic_write_text, file_sha256

__all__ = ["RANKING", "RankingStudy", "StudyCandidate", "run_ranking_study", "training_length_candidates"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyCandidate:
    """One candidate source model of the study: the source-stage settings that make it.

    Attributes:
        id: short and stable (``t1ce_e10``); names the scenario folders and fills the ``candidate`` column.
        overrides: config ids of the bundle's ``train.json`` and their values for its source stage; must hold
            ``source_modality`` (the image its validation Dice is measured on). Other kinds of source (tasks,
            multi-modal input) are other overrides.
    """

    id: str
    overrides: Mapping[str, Any]

    @property
    def modality(self) -> str:
        """The FeTS modality the source was trained on."""
        return str(self.overrides["source_modality"])


def training_length_candidates(modalities: Sequence[str], source_epochs: Sequence[int]) -> tuple[StudyCandidate, ...]:
    """One candidate per (modality, source epochs): ``<modality>_e<epochs>`` with ``source_modality`` and
    ``source_epochs`` set, modality-major."""
    return tuple(StudyCandidate(f"{m}_e{e}", {"source_modality": m, "source_epochs": e})
                 for m in modalities for e in source_epochs)


@dataclass(frozen=True)
class RankingStudy:
    """Which targets, candidate sources and seeds the study runs, with the training settings of ``profile``.

    Attributes:
        targets: FeTS target modalities (the first one's scenarios train the candidates' source models).
        candidates: the candidate sources, ids unique.
        seeds: one source model and one fine-tuning per (target, candidate, seed).
        profile: training settings and phantoms (its scenarios and methods are not used).
    """

    targets: Sequence[str]
    candidates: Sequence[StudyCandidate]
    seeds: Sequence[int]
    profile: Profile

    def __post_init__(self) -> None:
        ids = [c.id for c in self.candidates]
        if len(set(ids)) != len(ids) or not all("source_modality" in c.overrides for c in self.candidates):
            raise ValueError(f"ranking study: candidate ids must be unique and each must set source_modality; got {ids}")

    def scenario(self, candidate: StudyCandidate, target: str) -> GridScenario:
        """``fets_<candidate id>_to_<target>``, taking its source model from ``fets_<candidate id>_to_<first
        target>``."""
        first = f"fets_{candidate.id}_to_{self.targets[0]}"
        overrides = {**candidate.overrides, "target_modality": target}
        return GridScenario(f"fets_{candidate.id}_to_{target}", "fets", "ranking", overrides,
                            None if target == self.targets[0] else first)

    def cells(self, seed: int, target: str) -> dict[str, Cell]:
        """Candidate id -> the plain fine-tuning cell from that candidate's source to ``target``."""
        return {c.id: Cell(self.scenario(c, target), METHODS[PLAIN], seed) for c in self.candidates}


#: The committed study: two targets; eight candidates, the four modalities at the quick profile's source training
#: length (10 epochs) and at 2 epochs; three seeds; the quick profile's settings otherwise.
RANKING = RankingStudy(targets=("t1ce", "flair"),
                       candidates=training_length_candidates(("t1", "t1ce", "t2", "flair"), (10, 2)),
                       seeds=(0, 1, 2), profile=PROFILES["quick"])


def _scores_by_candidate(csv_path: Path) -> dict[str, dict[str, float]]:
    """Candidate name -> ``{"leep", "gbc"}`` from a ``source_ranking.csv``."""
    with csv_path.open(newline="") as handle:
        return {row["name"]: {"leep": float(row["leep"]), "gbc": float(row["gbc"])} for row in csv.DictReader(handle)}


def run_ranking_study(
    study: RankingStudy,
    root: Path,
    dataset_dirs: Mapping[str, str | None],
    progress: Callable[[str], Any] | None = None,
) -> list[dict[str, Any]]:
    """Train, fine-tune, rank and score every (target, candidate, seed); return one row per (target, candidate, seed)
    with :data:`~transrisk_components.experiments.ranking_report.COLUMNS`.

    Outputs: the grid's usual ``sources/`` and ``cells/`` folders under ``root`` (cells already finished there, with
    the same fine-tuning fingerprint, are reused), ``ranking/<target>/seed<k>/source_ranking.csv`` and
    ``ranking/source_val/<candidate id>/seed<k>/metrics_summary.json``.

    Args:
        dataset_dirs: bundle name -> dataset folder (``None``: the bundle's default phantom).
        progress: called with a one-line message after each step (e.g. ``tqdm.write``); ``None`` logs it.
    """
    report = progress or logger.warning
    profile = study.profile
    rows = []
    for seed in study.seeds:
        for target in study.targets:
            cells = study.cells(seed, target)
            for candidate in study.candidates:
                result = run_cell(cells[candidate.id], root, profile, dataset_dirs)
                report(f"ranking seed {seed}: {candidate.id} -> {target} fine-tuned, test Dice {result['test_dice']:.3f}")
            ranking_dir = root / "ranking" / target / f"seed{seed}"
            own = next(iter(cells.values()))
            made_from = _ranking_inputs(cells, own, root)
            inputs_file = ranking_dir / "inputs.json"
            reusable = inputs_file.is_file() and json.loads(inputs_file.read_text()) == made_from
            if not (reusable and (ranking_dir / "source_ranking.csv").is_file()):
                candidates = [{"name": c.id, "ckpt": str(source_checkpoint(cells[c.id], root)), "modality": c.modality}
                              for c in study.candidates]
                candidates_file = ranking_dir / "candidates.json"
                atomic_write_text(candidates_file, json.dumps(candidates, indent=2) + "\n")
                configs = [bundle_config("fets", "train"), bundle_config("fets", "rank_sources")]
                run_workflow(configs, "rank_sources", {**cell_overrides(own, root, profile, dataset_dirs),
                                                        "candidates_file": str(candidates_file),
                                                        "source_ranking_dir": str(ranking_dir)})
                atomic_write_text(inputs_file, json.dumps(made_from, indent=2, sort_keys=True) + "\n")
            scores = _scores_by_candidate(ranking_dir / "source_ranking.csv")
            report(f"ranking seed {seed}: target {target} LEEP, GBC " + ", ".join(
                f"{k} {v['leep']:.4f} {v['gbc']:.3f}" for k, v in scores.items()))
            for candidate in study.candidates:
                cell = cells[candidate.id]
                rows.append({"scenario": f"fets_to_{target}", "candidate": candidate.id, "seed": seed,
                             **scores[candidate.id],
                             "source_val_dice": _source_val_dice(candidate, cell, root, profile, dataset_dirs),
                             "test_dice": json.loads((cell.folder(root) / "result.json").read_text())["test_dice"]})
    return rows


def _ranking_inputs(cells: Mapping[str, Cell], own: Cell, root: Path) -> dict[str, Any]:
    """What a target's source ranking is made from: each candidate source's checkpoint (SHA-256) and the target's
    training cases and dataset (from the fine-tuning fingerprint of ``own``, a finished cell of that target).
    A ranking on disk is reused only while this matches."""
    settings = json.loads((own.folder(root) / "result.json").read_text())["finetune_fingerprint"]["settings"]
    return {
        "sources": {name: file_sha256(source_checkpoint(cell, root)) for name, cell in cells.items()},
        "target": {key: settings[key] for key in ("dataset_dir", "modality", "task", "train_cases")},
    }


def _source_val_dice(
    candidate: StudyCandidate, cell: Cell, root: Path, profile: Profile, dataset_dirs: Mapping[str, str | None]
) -> float:
    """Mean Dice of the cell's source model on its own modality, over the target-val cases (evaluated once)."""
    source = candidate.modality
    out = root / "ranking" / "source_val" / candidate.id / f"seed{cell.seed}"
    if not (out / "metrics_summary.json").is_file():
        configs = [bundle_config("fets", "train"), bundle_config("fets", "evaluate")]
        run_workflow(configs, "evaluating", {**cell_overrides(cell, root, profile, dataset_dirs),
                                             "target_modality": source, "output_dir": str(out),
                                             "validate#dataset#data": "$@scenario.split('target_val')",
                                             "validate#handlers#0#load_path": str(source_checkpoint(cell, root))})
    return mean_over_regions(json.loads((out / "metrics_summary.json").read_text()), "dice")
