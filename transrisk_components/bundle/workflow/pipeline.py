"""The stage graph of a bundle run, the one place that knows the order of the stages.

``training`` (and the run ids that stop earlier) runs, as child workflows over the bundle's config files
(:class:`~transrisk_components.bundle.workflow.stage.StageConfig`), with the user's overrides and the paths each
stage reads and writes passed explicitly:

1. **source** (``configs/source.json``): the source network on the source cases -> ``models/source.pt``; skipped with
   ``train_source false`` (the ``source_ckpt`` given is used as it is, only read);
2. **risk maps** (``configs/risk.json``): the source model over the target training cases, once per distinct set of
   map options the fine-tuning runs need -> ``outputs/risk_maps/<key>/`` (the key is the stage's fingerprint digest);
3. **fine-tuning** (``configs/train.json``): one run (``--safe#enabled false``: the paper's method) into ``models/``,
   or each safe-transfer candidate -- the fine-tuning config plus its override set -- into
   ``models/candidates/<name>/``; candidates whose configs are the same run are trained once;
4. **validation** (``configs/evaluate.json`` on the target-validation cases) of each candidate's best model;
5. **choice** by the selection rule (:mod:`.selection`, validation only), the chosen model installed as
   ``models/model.pt``, and the transfer report (:mod:`.report`).

With ``safe#ensembles true`` step 5 also scores ensembles of the candidates (:mod:`.ensembles`), each written as one
checkpoint to ``models/candidates/ensemble_<kind>/model.pt`` and validated like a candidate.

With k-fold choice (``safe#folds`` k >= 2) steps 3-4 run each candidate once per fold -- trained on the other folds of
the pooled target-train and target-val cases, validated on its own fold (:class:`~transrisk_components.data.scenario.
Scenario`), into ``models/candidates/<name>/fold<i>/`` -- the rule scores each candidate on every pooled case, and the
chosen candidate alone is trained once more on all pooled cases (``models/candidates/<name>/all/``): that model is
installed. Cost: k x candidates + 1 fine-tuning runs, against the candidates' number with one split, and for the
candidates that read risk maps k + 1 risk stages (one per training set: each fold's, and all pooled cases).

Everything is decided before the first stage starts (:meth:`TransferPipeline.plan`): every setting of every stage
and candidate is checked (:mod:`.settings`), every stage's fingerprint is computed from its resolved config
(:mod:`.fingerprint`) and compared with the record beside its outputs (:mod:`.plan`). A bad value, an unknown
override or outputs made otherwise stop the run there, having written nothing; only then does the run clear the
partial files of a killed run, write ``eval/splits.json`` and run the stages.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

from transrisk_components.bundle.handlers.metric_files import summary_table
from transrisk_components.bundle.io.records import (
    RECORD_SUFFIX,
    ForeignOutputError,
    StaleOutputError,
    named_by_a_record,
    read_record,
    write_record,
)
from transrisk_components.bundle.io.risk_manifest import MANIFEST
from transrisk_components.bundle.stages.risk import report_risk_classes
from transrisk_components.bundle.stages.risk_cache import RiskCache
from transrisk_components.bundle.stages.risk_export import export_risk_maps
from transrisk_components.bundle.engine.composite import write_composite_checkpoint
from transrisk_components.bundle.engine.ensemble import write_ensemble_checkpoint
from transrisk_components.bundle.workflow.candidates import load_candidates, needs_risk_maps
from transrisk_components.bundle.workflow.composites import COMPOSITE, region_assignment, region_signatures
from transrisk_components.bundle.workflow.ensembles import ENSEMBLE_PREFIX, ensemble_candidates
from transrisk_components.bundle.workflow.fingerprint import digest, file_digest, stage_fingerprint
from transrisk_components.bundle.workflow.parallel import ParallelJob, resolve_workers, run_side_by_side
from transrisk_components.bundle.workflow.plan import StagePlan, decide, release_outputs
from transrisk_components.bundle.workflow.report import transfer_report, transfer_report_lines, write_transfer_report
from transrisk_components.bundle.workflow.request import BundleRequest
from transrisk_components.bundle.workflow.selection import RaceOutcome, CaseDice, choose_candidate, race, rung_epochs
from transrisk_components.bundle.workflow.settings import (
    CHECKS,
    SettingsError,
    check_override_ids,
    check_settings,
    normalized_overrides,
)
from transrisk_components.bundle.workflow.stage import StageConfig
from transrisk_components.data.scenario import ALL_FOLDS
from transrisk_components.reporting.figures import validation_curve
from transrisk_components.utils.distributed import barrier, is_distributed, is_rank0
from transrisk_components.utils.io import atomic_write, file_sha256, remove_partial_writes
from transrisk_components.utils.lock import FolderLock

__all__ = ["FINAL_RUN", "ORCHESTRATED_RUN_IDS", "STAGE_FILES", "CandidatePlan", "RunPlan", "TransferPipeline"]

logger = logging.getLogger(__name__)


def _say(message: str, *args: Any) -> None:
    """Log a line of the run once (on rank 0 under ``torchrun``)."""
    if is_rank0():
        logger.info(message, *args)


#: The run ids whose stages this module runs, and the last stage each reaches.
ORCHESTRATED_RUN_IDS = ("training", "safe_training", "finetune", "pretrain", "risk_map", "export_risk")
#: The overrides of k-fold choice's final run: every pooled case trains, none is held out, so the run validates once,
#: at its last epoch, and its checkpoint is the last epoch's (a "best" one would be chosen on its training cases).
FINAL_RUN = {"fold": ALL_FOLDS, "val_interval": "$@max_epochs"}
#: The bundle's stage files (in the folder of ``train.json``), merged after the run's own files.
STAGE_FILES = {"source": "source.json", "risk": "risk.json", "evaluate": "evaluate.json", "export": "export_risk.json"}
#: The file the chosen candidate's provenance is recorded in, beside ``model.pt``.
PROVENANCE = "safe" + RECORD_SUFFIX
MODEL = "model.pt"


@dataclass
class CandidatePlan:
    """One fine-tuning run of the plan: a safe-transfer candidate, or the single run of ``--safe#enabled false``.

    Attributes:
        name: the run's name (``"finetune"`` for the single run; with k-fold choice ``"<candidate>/fold<i>"`` and
            ``"<candidate>/all"``): its folder under ``candidates/``.
        candidate: the candidate (start) it trains.
        overrides: its override set.
        finetune: its fine-tuning stage.
        risk_key: the risk maps it reads (``None``: none).
        from_source: whether it starts from the source model.
        validation: the evaluation of its best model on the validation cases (safe transfer only).
        same_as: the candidate whose run it is (an equal fingerprint), whose outputs it takes.
    """

    name: str
    candidate: str
    overrides: dict[str, Any]
    finetune: StagePlan
    risk_key: str | None
    from_source: bool
    validation: StageConfig | None = None
    same_as: str | None = None

    @property
    def model(self) -> Path:
        return self.finetune.required[0]

    @property
    def output_dir(self) -> Path:
        return Path(self.finetune.config.overrides["output_dir"])


@dataclass
class RunPlan:
    """Everything a run does, decided before it starts.

    Attributes:
        candidates: the fine-tuning runs that are trained (and, in safe transfer, validated): one per candidate, or
            with k-fold choice one per candidate and fold.
        folds: the folds of k-fold choice (1: one validation split).
        finals: with k-fold choice, each candidate's run on all pooled cases; the chosen one's alone is trained.
    """

    source: StagePlan | None
    source_digest: str | None
    risks: dict[str, StagePlan] = field(default_factory=dict)
    candidates: list[CandidatePlan] = field(default_factory=list)
    safe: bool = False
    folds: int = 1
    finals: dict[str, CandidatePlan] = field(default_factory=dict)

    def summary(self) -> str:
        """One line per stage: what the run does with it."""
        lines = []
        if self.source is not None:
            lines.append(f"source model: {self.source.decision}")
        elif self.source_digest is not None:
            lines.append("source model: given (train_source false), only read")
        for key, risk in self.risks.items():
            lines.append(f"risk maps {key}: {risk.decision}")
        for candidate in self.candidates:
            what = f"the same run as {candidate.same_as}" if candidate.same_as else candidate.finetune.decision
            lines.append(f"fine-tuning {candidate.name}: {what}")
        if self.finals:
            lines.append(f"k-fold choice over {self.folds} folds, then the chosen candidate on all pooled cases "
                         f"({', '.join(f'{c.name}: {c.finetune.decision}' for c in self.finals.values())})")
        return "; ".join(lines)


def _scenario_split(parser: ConfigParser, name: str) -> list[dict]:
    return parser.get_parsed_content("scenario").split(name)


def _checkpoint_folder(parser: ConfigParser, handlers_id: str) -> Path:
    """The ``ckpt_dir`` of the ``ResumableCheckpoints`` among a trainer's handlers (its raw config)."""
    for index, handler in enumerate(parser.get(handlers_id)):
        if isinstance(handler, Mapping) and str(handler.get("_target_", "")).endswith("ResumableCheckpoints"):
            return Path(parser.get_parsed_content(f"{handlers_id}#{index}#ckpt_dir"))
    raise ValueError(f"{handlers_id} has no ResumableCheckpoints handler: the stage could not resume")


def _values(parser: ConfigParser) -> dict[str, Any]:
    """The resolved values of the checked settings the config has."""
    return {name: parser.get_parsed_content(name) for name in CHECKS if name in parser}


class TransferPipeline:
    """The stages of one bundle run (module docstring).

    Args:
        request: the run's config files and overrides.
        run_id: one of :data:`ORCHESTRATED_RUN_IDS`: ``training`` (safe transfer, or one run with
            ``--safe#enabled false``), ``safe_training`` (safe transfer whatever ``safe#enabled`` says), ``finetune``
            (one run whatever it says), ``pretrain`` (the source stage), ``risk_map`` (up to the risk maps),
            ``export_risk`` (the risk maps, exported for people to look at).

    Raises:
        ValueError: an unknown run id.
    """

    def __init__(self, request: BundleRequest, run_id: str) -> None:
        if run_id not in ORCHESTRATED_RUN_IDS:
            raise ValueError(f"run id {run_id!r} is not one of {ORCHESTRATED_RUN_IDS}")
        self.request = request.with_overrides(normalized_overrides(request.overrides))
        self.run_id = run_id
        self.base = StageConfig("run", tuple(self.request.files()), self.request.overrides, "train#trainer",
                                self.request.meta_file, self.request.tracking)
        self._parser = self.base.parser()
        value = lambda name: self.base.value(self._parser, name)  # noqa: E731
        self.paths = {name: Path(value(name)) for name in ("ckpt_dir", "output_dir", "log_dir", "risk_dir", "source_ckpt")}
        self.paths["dataset_dir"] = Path(value("dataset_dir"))
        self.overwrite = bool(value("overwrite"))
        self._check_outputs = True

    # -- planning --------------------------------------------------------------------------------------------------
    def _shared(self) -> dict[str, Any]:
        """The overrides every stage gets: the run's own, and where the shared outputs are."""
        return {
            **self.request.overrides,
            "bundle_root": str(self.request.bundle_root),
            "dataset_dir": str(self.paths["dataset_dir"]),
            "risk_dir": str(self.paths["risk_dir"]),
            "source_ckpt": str(self.paths["source_ckpt"]),
        }

    def _stage(self, name: str, stage_file: str | None, overrides: Mapping[str, Any], component: str) -> StageConfig:
        files = self.request.files(*([stage_file] if stage_file else []))
        return StageConfig(name, tuple(files), dict(overrides), component, self.request.meta_file, self.request.tracking)

    def _check_ids(self, candidates: Mapping[str, Mapping[str, Any]]) -> None:
        files = self.request.files(*STAGE_FILES.values())
        merged = ConfigParser.load_config_files(files)
        check_override_ids(self.request.overrides, merged, "the run's overrides")
        for name, overrides in candidates.items():
            check_override_ids(overrides, merged, f"safe transfer candidate {name!r}")

    @property
    def safe(self) -> bool:
        """Whether this run trains the safe-transfer candidates."""
        enabled = bool(self.base.value(self._parser, "safe#enabled"))
        return self.run_id == "safe_training" or (self.run_id == "training" and enabled)

    def _candidates(self) -> dict[str, dict[str, Any]]:
        if not self.safe:
            return {"finetune": {}}
        loaded = load_candidates(self._parser.get("safe#candidates"), self._parser.get_parsed_content("safe#candidates_file"))
        taken = [name for name in loaded if name.startswith(ENSEMBLE_PREFIX)]
        if taken and self._parser.get_parsed_content("safe#ensembles"):
            raise SettingsError(f"safe#candidates: {taken} begin with {ENSEMBLE_PREFIX!r}, which names the ensembles of "
                                "safe#ensembles true; rename them")
        if COMPOSITE in loaded and self._parser.get_parsed_content("safe#composites"):
            raise SettingsError(f"safe#candidates: {COMPOSITE!r} names the per-region composite of safe#composites true; "
                                "rename that candidate")
        return {name: normalized_overrides(overrides) for name, overrides in loaded.items()}

    def _folds(self) -> int:
        """The folds of k-fold choice (1: none), refusing a ``fold`` set by hand or folds without safe transfer.

        Raises:
            SettingsError: naming the setting.
        """
        if "fold" in self.request.overrides:
            raise SettingsError("fold: set by safe transfer for each run of k-fold choice, not by hand; pass "
                                "--safe#folds <k> to choose by k folds")
        folds = self._parser.get_parsed_content("safe#folds") if "safe#folds" in self._parser else 1
        if folds != 1 and not self.safe and self.run_id in ("training", "finetune"):
            raise SettingsError(f"safe#folds {folds}: k-fold choice chooses among safe transfer's candidates, and this "
                                "run trains one start (--safe#enabled false, or run id 'finetune'); pass --safe#folds 1, "
                                "or run safe transfer")
        return int(folds) if self.safe else 1

    @staticmethod
    def _fold_runs(candidates: Mapping[str, Mapping[str, Any]], folds: int) -> dict[str, tuple[str, dict[str, Any]]]:
        """The fine-tuning runs that are trained and validated: run name -> (candidate, overrides)."""
        if folds == 1:
            return {name: (name, dict(overrides)) for name, overrides in candidates.items()}
        return {f"{name}/fold{index + 1}": (name, {**overrides, "fold": index})
                for name, overrides in candidates.items() for index in range(folds)}

    def _decide(self, plan: StagePlan, upstream_reused: bool, builds_on: Sequence[Path] = ()) -> None:
        if self._check_outputs:
            decide(plan, self.overwrite, upstream_reused, builds_on)

    def _plan_source(self) -> tuple[StagePlan | None, str]:
        source_ckpt = self.paths["source_ckpt"]
        if not self.base.value(self._parser, "train_source"):
            if not source_ckpt.is_file():
                raise FileNotFoundError(f"source_ckpt {source_ckpt} does not exist (train_source false: the source "
                                        "checkpoint is given, not trained here)")
            return None, file_digest(source_ckpt)
        config = self._stage("source", STAGE_FILES["source"], self._shared(), "source#stage")
        parser = config.parser()
        check_settings(_values(parser), "the source stage")
        fingerprint = stage_fingerprint(parser, "source", ["initialize", "source#stage"], {"source": _scenario_split(parser, "source")})
        checkpoints = _checkpoint_folder(parser, "source#handlers")
        plan = StagePlan(config, fingerprint, source_ckpt.with_name(source_ckpt.stem + RECORD_SUFFIX),
                         (source_ckpt, checkpoints), (source_ckpt,), checkpoints, int(parser.get_parsed_content("source_epochs")),
                         request=self.request.overrides, rebuilt_from_checkpoint=True)
        try:
            self._decide(plan, upstream_reused=True)
        except ForeignOutputError:
            raise ForeignOutputError(
                f"source checkpoint {source_ckpt} was not made by this bundle (no fingerprint record of ours names it), "
                "so it is never deleted or changed, whatever --overwrite says. To fine-tune from it as it is, pass "
                "--train_source false (with source#network_def, num_source_classes and source_output describing its "
                "network); to train a source model here instead, point --source_ckpt at a path of its own."
            ) from None
        return plan, plan.digest

    def _plan_risk(self, name: str, overrides: Mapping[str, Any], source_digest: str, plan: RunPlan) -> str:
        config = self._stage(f"risk maps ({name})", STAGE_FILES["risk"], overrides, "risk_stage")
        parser = config.parser()
        datalists = {"target_train": _scenario_split(parser, "target_train")}
        source_images = parser.get_parsed_content("risk_stage#source_datalist")
        if source_images:
            datalists["target_train_source_images"] = source_images
        fingerprint = stage_fingerprint(parser, "risk", ["risk_stage"], datalists, {"source": source_digest})
        key = digest(fingerprint)
        if key not in plan.risks:
            folder = self.paths["risk_dir"] / key
            stage = StagePlan(dataclasses.replace(config, name=f"risk maps {key}", overrides={**overrides, "risk_key": key}),
                              fingerprint, folder / ("risk" + RECORD_SUFFIX), (folder,), (folder / MANIFEST,), None, None,
                              request=self.request.overrides)
            complete = RiskCache(self.paths["risk_dir"], key).complete_manifest() is not None
            stage.decision = "reuse" if complete and (plan.source is None or plan.source.decision == "reuse") else "run"
            plan.risks[key] = stage
        return key

    def _candidate_paths(self, name: str) -> dict[str, Any]:
        if not self.safe:
            return {"ckpt_dir": str(self.paths["ckpt_dir"]), "output_dir": str(self.paths["output_dir"]),
                    "log_dir": str(self.paths["log_dir"]), "run_name": "finetune"}
        return {"ckpt_dir": str(self.paths["ckpt_dir"] / "candidates" / name),
                "output_dir": str(self.paths["output_dir"] / "candidates" / name),
                "log_dir": str(self.paths["log_dir"] / "candidates" / name), "run_name": name}

    def _candidate_config(self, name: str, overrides: Mapping[str, Any]) -> tuple[StageConfig, dict[str, Any]]:
        """A fine-tuning run's config and its checked settings."""
        shared = {**self._shared(), **overrides}
        where = f"safe transfer candidate {name!r}" if self.safe else "the fine-tuning stage"
        config = self._stage(f"fine-tuning {name}" if self.safe else "fine-tuning", None,
                             {**shared, **self._candidate_paths(name)}, "train#trainer")
        values = _values(config.parser())
        check_settings(values, where)
        return config, values

    def _plan_candidate(
        self, name: str, candidate: str, overrides: Mapping[str, Any], config: StageConfig, values: Mapping[str, Any],
        plan: RunPlan,
    ) -> CandidatePlan:
        risk_key = None
        if needs_risk_maps(values):
            risk_key = self._plan_risk(name, {**self._shared(), **overrides}, plan.source_digest, plan)
            manifest = self.paths["risk_dir"] / risk_key / MANIFEST
            config = dataclasses.replace(config, overrides={**config.overrides, "risk_manifest": str(manifest)})
        parser = config.parser()
        from_source = values.get("target_init") == "source"
        upstream = {**({"source": plan.source_digest} if from_source else {}), **({"risk": risk_key} if risk_key else {})}
        fingerprint = stage_fingerprint(parser, "finetune", ["initialize", "train#trainer"],
                                        {"target_train": _scenario_split(parser, "target_train"),
                                         "target_val": _scenario_split(parser, "target_val")}, upstream)
        ckpt_dir = Path(config.overrides["ckpt_dir"])
        checkpoints = _checkpoint_folder(parser, "train#handlers")
        model = Path(parser.get_parsed_content("validate#model_saver#save_dir")) / MODEL
        stage = StagePlan(config, fingerprint, ckpt_dir / ("finetune" + RECORD_SUFFIX), (model, checkpoints), (model,),
                          checkpoints, int(values["max_epochs"]), request=self.request.overrides)
        upstream_reused = (not from_source or plan.source is None or plan.source.decision == "reuse") and (
            risk_key is None or plan.risks[risk_key].decision == "reuse")
        self._decide(stage, upstream_reused, [self.paths["source_ckpt"]] if from_source else [])
        validation = None
        if self.safe:
            validation = self._stage(f"validation {name}", STAGE_FILES["evaluate"], {
                **config.overrides, "eval_split": "target_val", "model_file": str(model), "print_metrics": False,
                "output_dir": str(Path(config.overrides["output_dir"]) / "validation")}, "validate#evaluator")
        return CandidatePlan(name, candidate, dict(overrides), stage, risk_key, from_source, validation)

    def _check_model_path(self) -> None:
        """Before anything trains: may safe transfer write the chosen model to ``<ckpt_dir>/model.pt``?

        Only when an earlier safe transfer wrote it (its record names it), when nothing is there, or -- with
        ``--overwrite true`` -- when a single fine-tuning run did. A ``model.pt`` no record of ours names is never
        touched (the bundles then train into ``models/trained/``, see :func:`~transrisk_components.bundle.io.paths.ckpt_dir`).

        Raises:
            ForeignOutputError / StaleOutputError: naming the file and the remedy.
        """
        model = self.paths["ckpt_dir"] / MODEL
        record = read_record(self.paths["ckpt_dir"] / PROVENANCE)
        if not model.is_file() or (record is not None and MODEL in record.get("outputs", [])):
            return
        if not named_by_a_record(model):
            raise ForeignOutputError(f"{model} was not written by this bundle (no fingerprint record of ours names it), so "
                                     "safe transfer leaves it as it is; pass another --bundle_root for the chosen model")
        if not self.overwrite:
            raise StaleOutputError(
                f"{model} is the model of a single fine-tuning run ('finetune', or 'training' with --safe#enabled false); "
                f"safe transfer would replace it with the chosen candidate. Pass --overwrite true to replace it (that "
                f"run's checkpoints in {self.paths['ckpt_dir'] / 'finetune_run'} are kept), or another --bundle_root to keep both")

    def plan(self, check_outputs: bool = True) -> RunPlan:
        """Check every setting, compute every stage's fingerprint and decide what to do with it; write nothing.

        Args:
            check_outputs: decide what to do with each stage's outputs on disk (``False``: compute the fingerprints
                only, e.g. to compare them with a record made elsewhere).

        Raises:
            SettingsError: a setting's value is not allowed, or an override names an id no config has.
            StaleOutputError / ForeignOutputError: outputs are in the way (naming them and the remedy).
            FileNotFoundError: a file the run needs is missing.
        """
        self._check_outputs = check_outputs
        candidates = self._candidates() if self.run_id in ("training", "safe_training", "finetune") else {}
        self._check_ids(candidates)
        check_settings(_values(self._parser), "the run")
        folds = self._folds()
        runs = self._fold_runs(candidates, folds)
        finals = {} if folds == 1 else {name: (name, {**overrides, **FINAL_RUN}) for name, overrides in candidates.items()}
        configs = {run: self._candidate_config(run, overrides) for run, (_, overrides) in runs.items()}
        needs_source = self.run_id in ("pretrain", "risk_map", "export_risk") or any(
            values.get("target_init") == "source" or needs_risk_maps(values) for _, values in configs.values())
        source, source_digest = self._plan_source() if needs_source else (None, None)
        plan = RunPlan(source, source_digest, safe=self.safe, folds=folds)
        if self.run_id in ("risk_map", "export_risk"):
            self._plan_risk("run", self._shared(), source_digest, plan)
        for run, (candidate, overrides) in runs.items():
            plan.candidates.append(self._plan_candidate(run, candidate, overrides, *configs[run], plan))
        for candidate, (_, overrides) in finals.items():
            run = f"{candidate}/{ALL_FOLDS}"
            plan.finals[candidate] = self._plan_candidate(run, candidate, overrides, *self._candidate_config(run, overrides), plan)
        by_digest: dict[str, str] = {}
        for candidate in plan.candidates:
            first = by_digest.setdefault(candidate.finetune.digest, candidate.name)
            if first != candidate.name and candidate.finetune.decision != "reuse":
                candidate.same_as = first
        if plan.safe and check_outputs:
            self._check_model_path()
        return plan

    # -- running ---------------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Plan, then run the stages (module docstring)."""
        lock = FolderLock(self.request.bundle_root)
        lock.acquire()
        try:
            plan = self.plan()
            _say("transrisk %s: %s", self.run_id, plan.summary())
            if is_rank0():
                remove_partial_writes(self.request.bundle_root)
            self._parser.get_parsed_content("scenario").write_splits()  # every rank: its checks are collective
            barrier()
            self._execute(plan)
        finally:
            lock.release()

    def _run_stage(self, stage: StagePlan, what: str) -> None:
        if stage.decision == "reuse":
            _say("%s: reused (its fingerprint matches %s)", stage.config.name, stage.record)
            return
        why = ""
        if stage.decision == "redo":
            why = f" (redone: {stage.reasons[0]}{' ...' if len(stage.reasons) > 1 else ''})"
        elif stage.decision == "resume" and stage.reasons:
            why = f" ({stage.reasons[0]})"
        _say("%s: %s%s", stage.config.name, what, why)
        stage.start()
        stage.config.run()
        stage.finish()

    def _execute(self, plan: RunPlan) -> None:
        if plan.source is not None:
            self._run_stage(plan.source, "training the source model" if plan.source.decision != "resume" else "resuming")
        for key, risk in plan.risks.items():
            self._run_stage(risk, "computing the risk maps")
        if plan.risks:
            self._report_risk(plan)
        if self.run_id == "export_risk":
            self._export_risk(next(iter(plan.risks)))
        if not plan.candidates:
            return
        if plan.safe:
            self._safe_transfer(plan)
            return
        single = plan.candidates[0]
        self._run_stage(single.finetune, "fine-tuning" if single.finetune.decision != "resume" else "resuming")
        _say(
            "fine-tuned one start (the risk-weighted default; --safe#enabled false): %s. Transfer can hurt; without "
            "--safe#enabled false, training fine-tunes the candidate starts (risk map, plain fine-tuning, from "
            "scratch), keeps the one validation prefers and reports where transfer hurt", single.model)

    def _report_risk(self, plan: RunPlan) -> None:
        runs = [*plan.finals.values(), *plan.candidates]  # with k-fold choice: the maps of all pooled cases first
        using = next((c.risk_key for c in runs if c.risk_key), None) or next(iter(plan.risks))
        manifest = RiskCache(self.paths["risk_dir"], using).complete_manifest()
        risk = self._parser.get_parsed_content("risk")
        report_risk_classes(manifest, float(risk["dead_class_margin"]), risk["dead_classes"], risk["mask"],
                            self.paths["output_dir"] / "risk_stage_summary.json", self.paths["source_ckpt"])

    def _export_risk(self, key: str) -> None:
        export = self._stage("risk export", STAGE_FILES["export"], self._shared(), "export_risk")
        folder = Path(export.value(export.parser(), "risk_export_dir"))
        mask = self._parser.get_parsed_content("risk#mask")
        export_risk_maps(self.paths["risk_dir"] / key / MANIFEST, _scenario_split(self._parser, "target_train"), folder, mask)

    # -- safe transfer -----------------------------------------------------------------------------------------------
    def _train_to(self, names: Sequence[str], by_name: Mapping[str, CandidatePlan], epochs: int) -> None:
        """Train the candidates ``names`` to ``epochs``: those whose run is reused or is another's copy here, the
        rest one after another or side by side in child processes (``safe#workers``; under ``torchrun`` one after
        another, each on all ranks)."""
        to_run = [n for n in names if by_name[n].same_as is None
                  and not (by_name[n].finetune.decision == "reuse" and (by_name[n].finetune.epochs or 0) >= epochs)]
        for name in names:
            if name not in to_run and by_name[name].same_as is None:
                _say("%s: reused (its fingerprint matches %s)", by_name[name].finetune.config.name, by_name[name].finetune.record)
        for name in to_run:
            stage = by_name[name].finetune
            stage.epochs = epochs
            stage.config = dataclasses.replace(stage.config, overrides={**stage.config.overrides, "max_epochs": epochs})
        setting = self._parser.get_parsed_content("safe#workers")
        workers = 1 if is_distributed() else resolve_workers(setting, len(to_run))
        if is_distributed() and setting != "auto" and int(setting) > 1:
            _say("under torchrun the candidates run one after another, each on all ranks (safe#workers %s applies to "
                 "one process)", setting)
        if workers == 1:
            for name in to_run:
                self._run_stage(by_name[name].finetune, f"fine-tuning to epoch {epochs}")
                by_name[name].finetune.decision = "reuse"
        else:
            _say("fine-tuning %d candidates to epoch %d, %d side by side (safe#workers %s)", len(to_run), epochs, workers, setting)

            def started(job: ParallelJob) -> None:
                by_name[job.name].finetune.start()

            def finished(job: ParallelJob) -> None:
                by_name[job.name].finetune.finish()
                by_name[job.name].finetune.decision = "reuse"

            run_side_by_side([ParallelJob(n, by_name[n].finetune.config, by_name[n].output_dir / "train.log") for n in to_run],
                             workers, started, finished)
        for name in names:
            if by_name[name].same_as is not None:
                self._take_outputs(by_name[name], by_name[by_name[name].same_as])

    def _take_outputs(self, candidate: CandidatePlan, same: CandidatePlan) -> None:
        """Give ``candidate`` the outputs of ``same``, whose run it is (an equal fingerprint)."""
        _say("%s: the same run as candidate %s (equal fingerprints): its model and curves are copied",
                    candidate.finetune.config.name, same.name)
        candidate.finetune.start()
        if is_rank0():
            atomic_write(candidate.model, lambda tmp: shutil.copyfile(same.model, tmp))
            for name in ("learning_curves.csv", "learning_curves.png"):
                if (same.output_dir / name).is_file():
                    atomic_write(candidate.output_dir / name, lambda tmp, n=name: shutil.copyfile(same.output_dir / n, tmp))
        candidate.finetune.epochs = same.finetune.epochs
        candidate.finetune.finish()

    def _curve(self, candidate: CandidatePlan) -> dict[int, dict[str, float]]:
        return validation_curve(candidate.output_dir / "learning_curves.csv")

    def _train_candidates(self, plan: RunPlan) -> RaceOutcome:
        """Every candidate fully, or raced over the rungs (``safe#racing``)."""
        value = self._parser.get_parsed_content
        max_epochs, val_interval = int(value("max_epochs")), int(value("val_interval"))
        rungs = rung_epochs(value("safe#rungs"), max_epochs, val_interval) if value("safe#racing") else ()
        by_name = {c.name: c for c in plan.candidates}
        running = list(by_name)
        for index, rung in enumerate(rungs):
            self._train_to(running, by_name, rung)
            outcome = race({n: self._curve(by_name[n]) for n in by_name}, rungs[: index + 1], max_epochs)
            for name in running:
                if name in outcome.dropped:
                    _say("candidate %s dropped at epoch %d (more than the racing margin below the leader on "
                                "validation)", name, rung)
            running = list(outcome.finished)
        self._train_to(running, by_name, max_epochs)
        if not rungs:
            return RaceOutcome(finished=tuple(by_name), epochs={n: max_epochs for n in by_name}, cost=float(len(by_name)))
        return race({n: self._curve(by_name[n]) for n in by_name}, rungs, max_epochs)

    def _validate(self, validation: StageConfig, model: Path) -> dict[str, dict[str, float]]:
        """``model`` on the validation cases by the evaluation stage ``validation``: ``{case_id: {region: dice}}``
        (the evaluation is reused while the model is the one it scored)."""
        folder = Path(validation.overrides["output_dir"])
        summary = folder / "metrics_summary.json"
        scored = json.loads(summary.read_text()).get("model", {}).get("sha256") if summary.is_file() else None
        if scored != file_sha256(model):
            validation.run()
        barrier()
        cases: dict[str, dict[str, float]] = {}
        with (folder / "metrics_per_case.csv").open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                cases.setdefault(row["case_id"], {})[row["region"]] = float(row["dice"])
        return cases

    def _safe_transfer(self, plan: RunPlan) -> None:
        outcome = self._train_candidates(plan)
        by_name = {c.name: c for c in plan.candidates}
        validation = {name: self._validate(by_name[name].validation, by_name[name].model) for name in outcome.finished}
        if plan.finals:
            validation, outcome = self._pool_folds(plan, validation)
        seed = int(self._parser.get_parsed_content("seed"))
        singles = dict(validation)
        ensembles: dict[str, tuple[str, ...]] = {}  # ensembles and the composite: name -> members
        if self._parser.get_parsed_content("safe#ensembles"):
            ensembles = ensemble_candidates(choose_candidate(singles, seed=seed))
            for name, members in ensembles.items():
                validation[name] = self._validate_ensemble(name, [by_name[m] for m in members])
        composite = self._composite(singles, by_name) if self._parser.get_parsed_content("safe#composites") else None
        if composite is not None:
            ensembles[COMPOSITE], validation[COMPOSITE] = composite[1:]
        selection = choose_candidate(validation, seed=seed, k_fold=bool(plan.finals))
        if plan.finals:
            chosen = plan.finals[selection.chosen]
            _say("k-fold choice: %s; training it on all pooled cases", selection.reason)
            self._train_to([chosen.name], {chosen.name: chosen}, outcome.epochs[selection.chosen])
        model = self.paths["ckpt_dir"] / MODEL
        if is_rank0():
            runs = [*plan.candidates, chosen] if plan.finals else plan.candidates
            if selection.chosen in ensembles:
                self._install(self._combined_model(selection.chosen), selection.chosen, selection.chosen, runs, outcome, model,
                              selection.reason, ensembles[selection.chosen])
            else:
                run = chosen if plan.finals else by_name[selection.chosen]
                self._install(run.model, run.candidate, run.name, runs, outcome, model, selection.reason)
            summary = json.loads((self.paths["output_dir"] / "risk_stage_summary.json").read_text()) if plan.risks else {}
            scratch = list(dict.fromkeys(c.candidate for c in plan.candidates if not c.from_source))
            k_fold = self._k_fold_summary(plan, chosen, selection.cases) if plan.finals else None
            report = transfer_report(selection, outcome, selection.cases, scratch, summary.get("dead_classes", []), model,
                                     k_fold, ensembles, composite[0] if composite else None)
            path = write_transfer_report(report, self.paths["output_dir"])
            _say("%s", transfer_report_lines(report, path))
        barrier()

    def _combined_model(self, name: str) -> Path:
        return self.paths["ckpt_dir"] / "candidates" / name / MODEL

    def _validate_ensemble(self, name: str, members: Sequence[CandidatePlan]) -> dict[str, dict[str, float]]:
        """Write the ensemble of ``members`` as one checkpoint and score it on the validation cases."""
        _say("%s: the softmax mean of %s, scored on the validation cases", name, ", ".join(m.name for m in members))
        return self._validate_combined(name, "ensemble", members,
                                       lambda path: write_ensemble_checkpoint([m.model for m in members], path))

    def _composite(self, singles: Mapping[str, CaseDice], by_name: Mapping[str, CandidatePlan],
                   ) -> tuple[dict[str, str], tuple[str, ...], CaseDice] | None:
        """The per-region composite of the single candidates (``singles``: their validation Dice), written as one
        checkpoint and scored on the validation cases: (region -> candidate, its members in candidate order, its
        validation Dice); ``None``, said in the log, when one candidate is the best on every region."""
        value = self._parser.get_parsed_content
        regions, signatures = region_signatures(value("dataset_name"), value("target_task"))
        assignment = region_assignment(singles, regions)
        if assignment is None:
            _say("%s not scored: %s", COMPOSITE, "the task has one region" if len(regions) == 1 else
                 "one candidate is the best on every region")
            return None
        members = tuple(name for name in singles if name in assignment.values())
        _say("%s: %s, scored on the validation cases", COMPOSITE,
             ", ".join(f"{region} from {assignment[region]}" for region in regions))
        validation = self._validate_combined(COMPOSITE, "composite", [by_name[m] for m in members], lambda path: (
            write_composite_checkpoint([by_name[m].model for m in members], signatures,
                                       [members.index(assignment[region]) for region in regions], path)))
        return assignment, members, validation

    def _validate_combined(self, name: str, kind: str, members: Sequence[CandidatePlan],
                           write: Callable[[Path], object]) -> dict[str, dict[str, float]]:
        """Write the network that combines ``members`` (``write(path)``), with its record, and score it on the
        validation cases as the candidates are scored.

        Raises:
            ForeignOutputError: a checkpoint no record of ours names is where the combined network's goes.
        """
        model = self._combined_model(name)
        if model.is_file() and not named_by_a_record(model):
            raise ForeignOutputError(f"{model} was not written by this bundle (no fingerprint record of ours names it), "
                                     f"so it is left as it is; rename candidates or move the file to score {name}")
        if is_rank0():
            write(model)
            write_record(model.parent / (kind + RECORD_SUFFIX), {
                "stage": kind, "outputs": [MODEL], "members": {m.name: file_sha256(m.model) for m in members},
                "model_sha256": file_sha256(model)})
        barrier()
        first = members[0].validation
        validation = dataclasses.replace(first, name=f"validation {name}", overrides={
            **first.overrides, "model_file": str(model),
            "output_dir": str(self.paths["output_dir"] / "candidates" / name / "validation")})
        return self._validate(validation, model)

    def _pool_folds(self, plan: RunPlan, validation: Mapping[str, CaseDice]) -> tuple[dict[str, CaseDice], RaceOutcome]:
        """Each candidate's validation Dice on every pooled case (each case from the run that held out its fold),
        and the outcome of k-fold choice: every candidate finished, its cost k x candidates + 1 runs."""
        pooled: dict[str, dict[str, dict[str, float]]] = {}
        for run in plan.candidates:
            pooled.setdefault(run.candidate, {}).update(validation[run.name])
        epochs = int(self._parser.get_parsed_content("max_epochs"))
        return pooled, RaceOutcome(finished=tuple(pooled), epochs={name: epochs for name in pooled},
                                   cost=float(len(plan.candidates) + 1))

    @staticmethod
    def _k_fold_summary(plan: RunPlan, chosen: CandidatePlan, cases: int) -> dict[str, Any]:
        """What the transfer report says about k-fold choice."""
        return {"folds": plan.folds, "pooled_cases": cases, "runs": len(plan.candidates) + 1,
                "runs_with_one_split": len(plan.finals), "final_run": chosen.name}

    def _install(self, chosen_model: Path, chosen: str, run: str, runs: Sequence[CandidatePlan], outcome: RaceOutcome,
                 model: Path, reason: str, members: Sequence[str] = ()) -> None:
        """Copy ``chosen_model`` (of candidate or ensemble ``chosen``, trained by ``run``) to ``model`` with its
        provenance record beside it (the record lists ``runs``, and an ensemble's ``members``)."""
        installed = read_record(model.with_name(PROVENANCE)) or {}
        if model.is_file() and MODEL not in installed.get("outputs", []):
            release_outputs([model])  # a single run's model, replaced with --overwrite true (see _check_model_path)
        atomic_write(model, lambda tmp: shutil.copyfile(chosen_model, tmp))
        write_record(model.with_name(PROVENANCE), {
            "stage": "safe",
            "version": runs[0].finetune.fingerprint["version"],
            "outputs": [MODEL],
            "chosen": chosen,
            "run": run,
            "ensemble_members": list(members),
            "reason": reason,
            "model_sha256": file_sha256(model),
            "request": {"overrides": dict(self.request.overrides)},
            "candidates": {trained.name: {"overrides": trained.overrides, "epochs": outcome.epochs.get(trained.candidate),
                                          "fingerprint": read_record(trained.finetune.record)} for trained in runs},
        })
