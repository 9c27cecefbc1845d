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
from transrisk_components.experiments.runner import mean_over_regions, run_cell, run_grid_in_parallel, run_workflow
from transrisk_components.utils.io import atomic_write_text, file_sha256

__all__ = [
    "RANKING", "RANKING_MIXED", "RANKING_STUDIES", "RankingStudy", "StudyCandidate", "run_ranking_study",
    "training_length_candidates",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyCandidate:
    """One candidate source model of the study: the source-stage settings that make it.

    Attributes:
        id: short and stable (``t1ce_e10``); names the scenario folders and fills the ``candidate`` column.
        overrides: config ids of the bundle's ``train.json`` and their values for its source stage; must hold
            ``source_modality`` (one FeTS modality, a list in channel order, or ``"all"``: the images its validation
            Dice is measured on). Other kinds of source are other overrides: ``source_task`` (another label set),
            ``network_def#<key>`` (another network, which the model fine-tuned from it then has too).
    """

    id: str
    overrides: Mapping[str, Any]

    @property
    def modality(self) -> str | list[str]:
        """The FeTS modality (or modalities, in channel order, or ``"all"``) the source was trained on."""
        modality = self.overrides["source_modality"]
        return list(modality) if isinstance(modality, (list, tuple)) else str(modality)

    def ranking_entry(self, ckpt: Path) -> dict[str, Any]:
        """The candidate as ``rank_sources`` reads it (:data:`~transrisk_components.bundle.stages.ranking.CANDIDATE_KEYS`):
        its checkpoint, its network's overrides and the images it is run on: a one-modality source sees the
        target's image (the image the model fine-tuned from it is fed), a multi-modal one its own modalities of the
        target cases (the channels it was made for)."""
        entry: dict[str, Any] = {"name": self.id, "ckpt": str(ckpt), "modality": self.modality}
        if isinstance(self.modality, list) or self.modality == "all":
            entry["input_modality"] = self.modality
        network = {key.split("#", 1)[1]: value for key, value in self.overrides.items()
                   if key.startswith("network_def#")}
        if network:
            entry["network"] = network
        return entry

    def evaluation_overrides(self) -> dict[str, Any]:
        """Overrides that evaluate the source model itself: its modalities and task as the target's."""
        return {"target_modality": self.overrides["source_modality"],
                "target_task": self.overrides.get("source_task", "multiclass")}


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


#: The first study (``docs/results/ranking``): two targets; eight candidates, the four modalities at the quick
#: profile's source training length (10 epochs) and at 2 epochs; three seeds; the quick profile's settings otherwise.
RANKING = RankingStudy(targets=("t1ce", "flair"),
                       candidates=training_length_candidates(("t1", "t1ce", "t2", "flair"), (10, 2)),
                       seeds=(0, 1, 2), profile=PROFILES["quick"])

#: The mixed study (``docs/results/ranking_mixed``): the first study's eight candidates and three of other kinds --
#: a source on all four modalities (4 input channels), a deeper network (the Model Zoo BraTS SegResNet's four
#: levels, ``blocks_down`` 1-2-2-4, at the bundle's width) and another task (the whole tumour alone, 2 classes) --
#: at five seeds.
RANKING_MIXED = RankingStudy(
    targets=("t1ce", "flair"),
    candidates=training_length_candidates(("t1", "t1ce", "t2", "flair"), (10, 2)) + (
        StudyCandidate("all_e10", {"source_modality": "all", "source_epochs": 10}),
        StudyCandidate("t1ce_deep_e10", {"source_modality": "t1ce", "source_epochs": 10,
                                         "network_def#blocks_down": [1, 2, 2, 4], "network_def#blocks_up": [1, 1, 1]}),
        StudyCandidate("flair_wt_e10", {"source_modality": "flair", "source_task": "WT", "source_epochs": 10}),
    ),
    seeds=(0, 1, 2, 3, 4), profile=PROFILES["quick"])

#: The studies ``reproduce.py ranking --study`` runs, by name.
RANKING_STUDIES: dict[str, RankingStudy] = {"modalities": RANKING, "mixed": RANKING_MIXED}


def _scores_by_candidate(csv_path: Path) -> dict[str, dict[str, float]]:
    """Candidate name -> ``{"leep", "gbc"}`` from a ``source_ranking.csv``."""
    with csv_path.open(newline="") as handle:
        return {row["name"]: {"leep": float(row["leep"]), "gbc": float(row["gbc"])} for row in csv.DictReader(handle)}


def run_ranking_study(
    study: RankingStudy,
    root: Path,
    dataset_dirs: Mapping[str, str | None],
    progress: Callable[[str], Any] | None = None,
    workers: int = 1,
) -> list[dict[str, Any]]:
    """Train, fine-tune, rank and score every (target, candidate, seed); return one row per (target, candidate, seed)
    with :data:`~transrisk_components.experiments.ranking_report.COLUMNS`.

    Outputs: the grid's usual ``sources/`` and ``cells/`` folders under ``root`` (cells already finished there, with
    the same fine-tuning fingerprint, are reused), ``ranking/<target>/seed<k>/source_ranking.csv`` and
    ``ranking/source_val/<candidate id>/seed<k>/metrics_summary.json``.

    Args:
        dataset_dirs: bundle name -> dataset folder (``None``: the bundle's default phantom).
        progress: called with a one-line message after each step (e.g. ``tqdm.write``); ``None`` logs it.
        workers: with more than 1, every fine-tuning cell (and its source model) is first run in this many
            processes (:func:`~transrisk_components.experiments.runner.run_grid_in_parallel`); the rankings and
            the source evaluations then run in this process.
    """
    report = progress or logger.warning
    profile = study.profile
    if workers > 1:
        cells = [cell for seed in study.seeds for target in study.targets for cell in study.cells(seed, target).values()]
        run_grid_in_parallel(cells, root, profile, dataset_dirs, workers, on_row=lambda row: report(
            f"ranking: {row['scenario']} seed {row['seed']} fine-tuned, test Dice {row['test_dice']:.3f}"))
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
                candidates = [c.ranking_entry(source_checkpoint(cells[c.id], root)) for c in study.candidates]
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
    fingerprint = json.loads((own.folder(root) / "result.json").read_text())["finetune_fingerprint"]
    return {
        "sources": {name: file_sha256(source_checkpoint(cell, root)) for name, cell in cells.items()},
        "target": {"modality": fingerprint["config"]["target_modality"], "task": fingerprint["config"]["target_task"],
                   "files": fingerprint["inputs"]},
    }


def _source_val_dice(
    candidate: StudyCandidate, cell: Cell, root: Path, profile: Profile, dataset_dirs: Mapping[str, str | None]
) -> float:
    """Mean Dice of the cell's source model on its own modality and task, over the target-val cases (evaluated
    once)."""
    out = root / "ranking" / "source_val" / candidate.id / f"seed{cell.seed}"
    if not (out / "metrics_summary.json").is_file():
        configs = [bundle_config("fets", "train"), bundle_config("fets", "evaluate")]
        run_workflow(configs, "evaluating", {**cell_overrides(cell, root, profile, dataset_dirs),
                                             **candidate.evaluation_overrides(), "output_dir": str(out),
                                             "eval_split": "target_val", "print_metrics": False,
                                             "model_file": str(source_checkpoint(cell, root))})
    return mean_over_regions(json.loads((out / "metrics_summary.json").read_text()), "dice")
