"""Safe transfer: fine-tune several candidate starts from the same cached data, keep the one validation prefers.

A *candidate* is a named set of config overrides on top of the bundle's own ``train.json`` (the bundles' default
list: ``risk_map`` -- the risk-weighted default --, ``plain`` fine-tuning and ``scratch``; any option, L2-SP or a
head re-initialisation can be one, from a JSON file of ``{name: {config id: value}}``). Each candidate is the
bundle's own fine-tuning stage run in a folder of its own (``models/candidates/<name>/``,
``eval/candidates/<name>/``) with its own fingerprint, so a rerun reuses the finished candidates and resumes a
killed one; the source model and the risk maps are the ones the bundle computed once.

:meth:`SafeTransferStage.run`:

1. trains the candidates one after the other -- all of them fully, or (``racing``) all to the first rung, then only
   those :func:`~transrisk_components.bundle.selection.race` keeps to the next rung and to the end;
2. validates each finished candidate's best checkpoint on the target-validation cases (``safe#evaluator``: Dice
   per case and region);
3. applies the selection rule (:func:`~transrisk_components.bundle.selection.choose_candidate`, validation only);
4. copies the chosen model to ``models/model.pt`` (what ``evaluating``, ``inferring`` and ``ckpt_export`` use), with
   its provenance in ``models/safe.fingerprint.json``;
5. writes ``eval/transfer_report.json`` and ``eval/transfer_report.png`` -- each candidate's validation Dice per
   region with its CI over cases, the choice and why, each region where training from scratch beat every transfer
   candidate on validation (negative transfer, named), and the risk stage's dead-class warnings beside what the
   candidates then learnt -- and ends the log with the same in a few lines.

Candidates are parsed from the running workflow's own configuration (every file and command-line override the user
gave), so a candidate differs from the bundle's ``finetune`` run id only by its overrides and folders.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import monai
from monai.bundle import ConfigParser

import transrisk_components
from transrisk_components.bundle.fingerprint import ForeignOutputError, StaleOutputError, named_by_a_record
from transrisk_components.bundle.paths import active_workflow
from transrisk_components.bundle.selection import (
    STALL_DICE,
    TIE_MARGIN,
    RaceOutcome,
    Selection,
    choose_candidate,
    race,
    rung_epochs,
)
from transrisk_components.reporting.figures import plot_region_dice, read_learning_curves, validation_curve
from transrisk_components.utils.io import atomic_write, atomic_write_text, file_sha256

__all__ = ["SafeTransferStage", "fine_tune", "load_candidates", "suggest_safe_training"]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: The per-case validation files the ``safe#evaluator`` writes into a candidate's output folder.
VALIDATION_CSV = "val_metrics_per_case.csv"
PROVENANCE = "safe.fingerprint.json"


def load_candidates(candidates: Mapping[str, Mapping[str, Any]] | None, candidates_file: str | None) -> dict[str, dict[str, Any]]:
    """The candidates: ``candidates_file`` (JSON ``{name: {config id: value}}``) when given, else ``candidates``.

    Raises:
        FileNotFoundError / ValueError: the file is missing or not such a mapping, a name is not a folder-safe word,
            or there is no candidate.
    """
    if candidates_file:
        path = Path(candidates_file)
        if not path.is_file():
            raise FileNotFoundError(f"safe#candidates_file {path} does not exist")
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"safe#candidates_file {path} is not valid JSON: {error}") from error
        source = f"safe#candidates_file {path}"
    else:
        loaded, source = candidates, "safe#candidates"
    if not isinstance(loaded, Mapping) or not loaded:
        raise ValueError(f"{source} must be a non-empty mapping of candidate name -> config overrides")
    result = {}
    for name, overrides in loaded.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"{source}: candidate name {name!r} must be letters, digits, '_', '-' or '.' (a folder name)")
        if not isinstance(overrides, Mapping):
            raise ValueError(f"{source}: candidate {name!r} must map config ids to values, got {overrides!r}")
        result[name] = dict(overrides)
    return result


def fine_tune(use_safe: bool) -> None:
    """The fine-tuning step of the ``training`` run id: safe transfer (``safe#stage``, the default) or the bundle's one
    trainer (``train#trainer``: the paper's method alone, ``--safe#enabled false``).

    The step is looked up by id in the running workflow when it runs: MONAI resolves every reference of an
    expression before evaluating it, so ``$@safe#stage.run() if @use_safe else @train#trainer.run()`` would also
    build the unused trainer, and with it a cache of every training case.
    """
    parser = active_workflow("training").parser
    parser.get_parsed_content("safe#stage" if use_safe else "train#trainer").run()


def suggest_safe_training(model: str) -> None:
    """The last line of ``training`` with ``--safe#enabled false``: where its model is, and how to train the candidate
    starts instead."""
    logger.info(
        "fine-tuned one start (the risk-weighted default; --safe#enabled false): %s. Transfer can hurt; without "
        "--safe#enabled false, training fine-tunes the candidate starts (risk map, plain fine-tuning, from scratch), "
        "keeps the one validation prefers and reports where transfer hurt", model)


def _read_validation(path: Path) -> dict[str, dict[str, float]]:
    """``{case_id: {region: dice}}`` from a per-case metrics CSV."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    cases: dict[str, dict[str, float]] = {}
    for row in rows:
        cases.setdefault(row["case_id"], {})[row["region"]] = float(row["dice"])
    return cases


class SafeTransferStage:
    """Train the candidate starts, choose one on validation, install it as the bundle's model (module docstring).

    Args:
        candidates: candidate name -> config overrides (the bundle's ``safe#candidates``); the tie order of the rule.
        candidates_file: a JSON file of candidates that replaces ``candidates`` (``None``: use ``candidates``).
        shared: resolved config values every candidate must share with this run (source checkpoint, risk-map
            folder, dataset folder), passed to each candidate as overrides.
        ckpt_dir: the bundle's model folder: candidates go to ``<ckpt_dir>/candidates/<name>``, the chosen model to
            ``<ckpt_dir>/model.pt``.
        output_dir: the bundle's report folder: candidates' reports in ``<output_dir>/candidates/<name>``, the
            transfer report in ``<output_dir>``.
        log_dir: TensorBoard folder; candidates log to ``<log_dir>/candidates/<name>``.
        max_epochs, val_interval: the fine-tuning length and validation interval of every candidate.
        racing: race the candidates (successive halving) instead of training every one fully.
        rungs: racing rungs as fractions of ``max_epochs`` (:func:`~transrisk_components.bundle.selection.rung_epochs`).
        seed: the run's seed; each candidate's training starts from ``set_determinism(seed)``.
        risk_summary: the risk stage's ``risk_stage_summary.json`` (its dead-class warnings enter the report), or
            ``None``.
        overwrite: replace a ``models/model.pt`` that the bundle's ``training`` run id wrote (never one the bundle
            did not write).
    """

    def __init__(
        self,
        candidates: Mapping[str, Mapping[str, Any]] | None,
        candidates_file: str | None,
        shared: Mapping[str, Any],
        ckpt_dir: str,
        output_dir: str,
        log_dir: str,
        max_epochs: int,
        val_interval: int,
        racing: bool = False,
        rungs: Sequence[float] = (0.25, 0.5),
        seed: int = 0,
        risk_summary: str | None = None,
        overwrite: bool = False,
    ) -> None:
        self.candidates = load_candidates(candidates, candidates_file)
        self.shared = dict(shared)
        self.ckpt_dir, self.output_dir, self.log_dir = Path(ckpt_dir), Path(output_dir), Path(log_dir)
        self.max_epochs, self.val_interval = int(max_epochs), int(val_interval)
        self.racing = bool(racing)
        self.rungs = rung_epochs(rungs, self.max_epochs, self.val_interval) if self.racing else ()
        self.seed = int(seed)
        self.risk_summary = Path(risk_summary) if risk_summary else None
        self.overwrite = overwrite
        self._config: dict[str, Any] | None = None

    # -- folders -------------------------------------------------------------------------------------------------
    def candidate_ckpt_dir(self, name: str) -> Path:
        """``<ckpt_dir>/candidates/<name>``: the candidate's checkpoints, fingerprint and ``model.pt``."""
        return self.ckpt_dir / "candidates" / name

    def candidate_output_dir(self, name: str) -> Path:
        """``<output_dir>/candidates/<name>``: the candidate's learning curves and validation metrics."""
        return self.output_dir / "candidates" / name

    @property
    def model_path(self) -> Path:
        """``<ckpt_dir>/model.pt``: the chosen candidate's model."""
        return self.ckpt_dir / "model.pt"

    # -- the stage -------------------------------------------------------------------------------------------------
    def run(self) -> Selection:
        """Train, validate and choose (module docstring); return the :class:`Selection`.

        Raises:
            RuntimeError: not running inside a MONAI ``ConfigWorkflow``.
            ValueError: a candidate overrides a config id the bundle does not have.
            StaleOutputError: a candidate's outputs were made with other settings, or ``models/model.pt`` is not one
                this stage may replace.
        """
        self._config = copy.deepcopy(active_workflow("safe transfer").parser.get())
        self._check_overrides()
        self._check_model_path()
        outcome = self._train_candidates()
        validation = {name: self._validate(name) for name in outcome.finished}
        selection = choose_candidate(validation, seed=self.seed)
        self._install(selection, outcome)
        report = self._report(selection, outcome, validation)
        self._log(report)
        return selection

    def _check_overrides(self) -> None:
        probe = ConfigParser(copy.deepcopy(self._config))
        for name, overrides in self.candidates.items():
            unknown = [key for key in overrides if key not in probe]
            if unknown:
                raise ValueError(f"safe transfer candidate {name!r} overrides config ids the bundle does not have: "
                                 f"{unknown} (ids are written with '#', e.g. 'risk#enabled')")

    def _parser(self, name: str, max_epochs: int) -> ConfigParser:
        """The bundle's configuration as candidate ``name`` sees it, parsed."""
        parser = ConfigParser(copy.deepcopy(self._config))
        parser.update({
            **self.candidates[name],
            **self.shared,
            "ckpt_dir": str(self.candidate_ckpt_dir(name)),
            "output_dir": str(self.candidate_output_dir(name)),
            "log_dir": str(self.log_dir / "candidates" / name),
            "max_epochs": int(max_epochs),
        })
        parser.parse(reset=True)
        return parser

    def _train(self, name: str, epochs: int) -> None:
        """Train (or resume) candidate ``name`` up to epoch ``epochs``; a candidate that already trained that far
        (an earlier run, e.g. without racing) is kept as it is once its fingerprint matches."""
        parser = self._parser(name, epochs)
        parser.get_parsed_content("fingerprint#finetune").prepare()  # stale outputs stop here, named
        curve = self.candidate_output_dir(name) / "learning_curves.csv"
        done = max(read_learning_curves(curve)["epoch"], default=0) if curve.is_file() else 0
        if done >= epochs:
            logger.info("safe transfer: candidate %s already fine-tuned to epoch %d: reused", name, int(done))
            return
        logger.info("safe transfer: candidate %s, fine-tuning to epoch %d of %d", name, epochs, self.max_epochs)
        monai.utils.set_determinism(seed=self.seed)
        parser.get_parsed_content("train#trainer").run()

    def _curve(self, name: str) -> dict[int, dict[str, float]]:
        """Candidate ``name``'s validation curve: epoch -> region -> mean validation Dice."""
        return validation_curve(self.candidate_output_dir(name) / "learning_curves.csv")

    def _train_candidates(self) -> RaceOutcome:
        """Every candidate fully, or raced over :attr:`rungs`; the outcome names the candidates that finished."""
        names = list(self.candidates)
        running = names
        for index, rung in enumerate(self.rungs):
            for name in running:
                self._train(name, rung)
            outcome = race({n: self._curve(n) for n in names}, self.rungs[: index + 1], self.max_epochs)
            for name in running:
                if name in outcome.dropped:
                    logger.info("safe transfer: candidate %s dropped at epoch %d (more than the racing margin below "
                                "the leader on validation)", name, rung)
            running = list(outcome.finished)
        for name in running:
            self._train(name, self.max_epochs)
        if not self.rungs:
            return RaceOutcome(finished=tuple(names), epochs={n: self.max_epochs for n in names}, cost=float(len(names)))
        return race({n: self._curve(n) for n in names}, self.rungs, self.max_epochs)

    def _validate(self, name: str) -> dict[str, dict[str, float]]:
        """Candidate ``name``'s best model on the target-validation cases: ``{case_id: {region: dice}}``."""
        parser = self._parser(name, self.max_epochs)
        parser.get_parsed_content("safe#evaluator").run()
        return _read_validation(self.candidate_output_dir(name) / VALIDATION_CSV)

    def _check_model_path(self) -> None:
        """Before anything trains: may the chosen model be written to ``<ckpt_dir>/model.pt``?

        A ``model.pt`` is replaced only when an earlier ``safe_training`` wrote it (its record names it), or, with
        ``overwrite``, when a single fine-tuning run did (the fine-tuning record names it). A ``model.pt`` no
        record of ours names -- one the bundle did not write, such as a Model Zoo download's weights -- is never
        touched (the bundles then train into ``models/trained/``, see :func:`~transrisk_components.bundle.paths.ckpt_dir`).

        Raises:
            ForeignOutputError / StaleOutputError: naming the file and the remedy.
        """
        record = self.ckpt_dir / PROVENANCE
        installed_here = record.is_file() and self.model_path.name in json.loads(record.read_text()).get("outputs", [])
        if not self.model_path.is_file() or installed_here:
            return
        if not named_by_a_record(self.model_path):
            raise ForeignOutputError(
                f"{self.model_path} was not written by this bundle (no fingerprint record of ours names it), so "
                f"safe transfer leaves it as it is; pass another --ckpt_dir (or --bundle_root) for the chosen model")
        if not self.overwrite:
            raise StaleOutputError(
                f"{self.model_path} is the model of a single fine-tuning run ('finetune', or 'training' with "
                f"--safe#enabled false); safe transfer would replace it with the chosen candidate. Pass --overwrite true "
                f"to replace it (that run's checkpoints in "
                f"{self.ckpt_dir / 'finetune_run'} are kept), or another --bundle_root to keep both")

    def _install(self, selection: Selection, outcome: RaceOutcome) -> None:
        """Copy the chosen candidate's model to ``models/model.pt`` (see :meth:`_check_model_path`) with its
        provenance record ``models/safe.fingerprint.json``."""
        record = self.ckpt_dir / PROVENANCE
        chosen = self.candidate_ckpt_dir(selection.chosen) / "model.pt"
        atomic_write(self.model_path, lambda tmp: shutil.copyfile(chosen, tmp))
        provenance = {
            "stage": "safe",
            "version": transrisk_components.__version__,
            "settings": {"candidates": self.candidates, "racing_rungs": list(self.rungs),
                         "rule": {"module": "transrisk_components.bundle.selection", "tie_margin": TIE_MARGIN,
                                  "stall_dice": STALL_DICE}},
            "outputs": [self.model_path.name],
            "chosen": selection.chosen,
            "reason": selection.reason,
            "model_sha256": file_sha256(self.model_path),
            "candidates": {
                name: {
                    "overrides": overrides,
                    "epochs": outcome.epochs.get(name),
                    "fingerprint": json.loads((self.candidate_ckpt_dir(name) / "finetune.fingerprint.json").read_text()),
                }
                for name, overrides in self.candidates.items()
            },
        }
        atomic_write_text(record, json.dumps(provenance, indent=2) + "\n")

    def _scratch_candidates(self) -> list[str]:
        return [n for n, o in self.candidates.items() if o.get("target_init") == "random"]

    def _report(
        self, selection: Selection, outcome: RaceOutcome, validation: Mapping[str, Mapping[str, Mapping[str, float]]]
    ) -> dict[str, Any]:
        """Write ``transfer_report.json`` and ``.png``; return the report."""
        scratch = [n for n in self._scratch_candidates() if n in validation]
        transfer = [n for n in validation if n not in scratch]
        negative = []
        if scratch and transfer:
            regions = list(selection.candidate(transfer[0]).regions)
            for region in regions:
                best_transfer = max(transfer, key=lambda n: selection.candidate(n).regions[region])
                best_scratch = max(scratch, key=lambda n: selection.candidate(n).regions[region])
                gap = selection.candidate(best_scratch).regions[region] - selection.candidate(best_transfer).regions[region]
                if gap > 0:
                    negative.append({"region": region, "scratch": best_scratch, "best_transfer": best_transfer,
                                     "difference": gap})
        dead: list[str] = []
        if self.risk_summary is not None and self.risk_summary.is_file():
            dead = json.loads(self.risk_summary.read_text())["dead_classes"]
        report = {
            "chosen": selection.chosen,
            "reason": selection.reason,
            "tied": list(selection.tied),
            "model": str(self.model_path),
            "validation_cases": len(next(iter(validation.values()))),
            "candidates": {
                c.name: {"score": c.score, "score_ci": list(c.score_ci), "regions": c.regions,
                         "difference_to_chosen": c.difference, "difference_ci": list(c.difference_ci),
                         "stalled_regions": list(c.stalled), "epochs": outcome.epochs.get(c.name)}
                for c in selection.candidates
            },
            "dropped_by_racing": outcome.dropped,
            "cost_in_runs": outcome.cost,
            "negative_transfer": negative,
            "leep_dead_classes": {"classes": dead,
                                  "stalled_regions_of_transfer_candidates": {n: list(selection.candidate(n).stalled)
                                                                             for n in transfer}},
        }
        atomic_write_text(self.output_dir / "transfer_report.json", json.dumps(report, indent=2) + "\n")
        summaries = {
            name: json.loads((self.candidate_output_dir(name) / "val_metrics_summary.json").read_text())
            for name in validation
        }
        plot_region_dice(summaries, self.output_dir / "transfer_report.png",
                         title=f"validation Dice per region, mean ± SD over cases; chosen: {selection.chosen}")
        return report

    def _log(self, report: Mapping[str, Any]) -> None:
        """The last lines of the run: the candidates, the choice, negative transfer, where the model is."""
        lines = ["safe transfer, validation Dice (%) on "
                 f"{report['validation_cases']} cases, mean over regions [95% CI over cases]:"]
        for name, entry in report["candidates"].items():
            regions = ", ".join(f"{r} {100 * v:.1f}" for r, v in entry["regions"].items())
            stalled = f"; never learnt {', '.join(entry['stalled_regions'])}" if entry["stalled_regions"] else ""
            marker = "  <- chosen" if name == report["chosen"] else ""
            lines.append(f"  {name}: {100 * entry['score']:.1f} [{100 * entry['score_ci'][0]:.1f}, "
                         f"{100 * entry['score_ci'][1]:.1f}] ({regions}{stalled}){marker}")
        for name, rung in report["dropped_by_racing"].items():
            lines.append(f"  {name}: dropped by racing at epoch {rung}")
        for item in report["negative_transfer"]:
            lines.append(f"  negative transfer in {item['region']}: {item['scratch']} beat {item['best_transfer']} by "
                         f"{100 * item['difference']:.1f} points on validation")
        if not report["negative_transfer"] and any(n in report["candidates"] for n in self._scratch_candidates()):
            lines.append("  no region where training from scratch beat transfer on validation")
        if report["leep_dead_classes"]["classes"]:
            lines.append(f"  LEEP warned that the source sees nothing of {', '.join(report['leep_dead_classes']['classes'])}")
        lines.append(f"  chosen: {report['reason']}")
        lines.append(f"  model: {report['model']}; report: {self.output_dir / 'transfer_report.json'} (and .png)")
        logger.info("\n".join(lines))
