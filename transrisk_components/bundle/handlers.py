"""Ignite handlers the bundles attach to their engines, and the report files they write.

- :class:`ResumableCheckpoints` -- periodic checkpoints of a trainer, restored when a killed run restarts, guarded
  by the stage's fingerprint.
- :class:`BestModelState` -- the best validation metric so far and the ``model.pt`` saver's record of it, saved
  with the periodic checkpoint so that a resumed run never replaces a better ``model.pt`` with a worse one.
- :class:`LearningCurveWriter` -- ``eval/learning_curves.csv`` and its PNG, one row per epoch.
- :class:`RegionMetricsWriter` -- per-case region metrics of an evaluator (CSV) and their summary (JSON).

The figures come from :mod:`transrisk_components.reporting.figures`; the metrics from
:mod:`transrisk_components.bundle.metrics`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.handlers import CheckpointLoader, CheckpointSaver, from_engine

from transrisk_components.bundle.metrics import CaseScore, RegionMetrics, summarise, voxel_spacing
from transrisk_components.reporting.figures import plot_learning_curves, read_learning_curves
from transrisk_components.bundle.fingerprint import StageFingerprint
from transrisk_components.utils.distributed import is_distributed, is_rank0
from transrisk_components.utils.io import atomic_write_text, file_sha256, load_checkpoint

__all__ = [
    "BestModelState",
    "NamedCheckpointLoader",
    "LearningCurveWriter",
    "RegionMetricsWriter",
    "ResumableCheckpoints",
    "write_case_csv",
    "write_summary_json",
]

logger = logging.getLogger(__name__)


_EPOCH = re.compile(r"_epoch=(\d+)\.pt$")


class ResumableCheckpoints:
    """Ignite handler: checkpoint ``objects`` and the engine every ``interval`` epochs and at the end; resume
    from the newest on start.

    Files are ``<ckpt_dir>/<prefix>_checkpoint_epoch=N.pt`` (the last one kept; ignite writes on rank 0 only). A run
    killed mid-way restarts at the epoch after its newest checkpoint (losing at most ``interval - 1`` epochs); a
    finished run does nothing more, since the last epoch is always saved; a run with a larger ``max_epochs``
    continues a finished one.

    Attach it after the trainer's ``ValidationHandler``: handlers run in the order they were attached, and an
    epoch's checkpoint must hold the best-model record after that epoch's validation.

    Before anything is restored, ``fingerprint`` (when given) checks that the stage's outputs on disk -- these
    checkpoints and e.g. ``model.pt`` -- were made with the current settings and inputs; see
    :meth:`StageFingerprint.prepare` (stale outputs stop the run, or are deleted with ``overwrite``).

    Args:
        ckpt_dir: folder of the periodic checkpoints.
        objects: objects to save and restore besides the engine, e.g. ``{"model": net, "optimizer": opt,
            "best": BestModelState(...)}``.
        prefix: checkpoint file prefix.
        interval: epochs between checkpoints (a full model + optimiser + trainer state each time).
        fingerprint: the stage's fingerprint guarding ``ckpt_dir`` and the stage's other outputs.
        map_location: where loaded tensors go.

    Raises:
        ValueError: ``interval < 1``.
    """

    def __init__(
        self,
        ckpt_dir: str,
        objects: dict,
        prefix: str,
        interval: int = 1,
        fingerprint: StageFingerprint | None = None,
        map_location: str | None = "cpu",
    ) -> None:
        if int(interval) < 1:
            raise ValueError(f"checkpoint interval must be >= 1 epoch, got {interval}")
        self.ckpt_dir = Path(ckpt_dir)
        self.objects = objects
        self.prefix = prefix
        self.interval = int(interval)
        self.fingerprint = fingerprint
        self.map_location = map_location

    def latest(self) -> Path | None:
        """The newest checkpoint file, or ``None``."""
        found = [
            (int(m.group(1)), p)
            for p in self.ckpt_dir.glob(f"{self.prefix}_checkpoint_epoch=*.pt")
            if (m := _EPOCH.search(p.name))
        ]
        return max(found)[1] if found else None

    def attach(self, engine: Any) -> None:
        """Attach the saver, and a handler that checks the fingerprint and resumes when ``engine`` starts.

        Nothing is read or written before the trainer runs, so the trainer can be built before earlier stages
        ran (MONAI's ``check_properties`` builds it on a fresh bundle folder).
        """
        save = {**self.objects, "trainer": engine}
        engine.add_event_handler(Events.STARTED, self._resume, save)
        # built on every rank: ignite writes on rank 0 only, and its first rank query is a collective call
        saver = CheckpointSaver(
            save_dir=str(self.ckpt_dir), save_dict=save, file_prefix=self.prefix, save_interval=self.interval, n_saved=1
        )
        saver.attach(engine)
        engine.add_event_handler(Events.COMPLETED, self._save_last_epoch, saver)

    def _resume(self, engine: Engine, save: dict) -> None:
        """Check the stage's outputs against its fingerprint, then restore the newest checkpoint if any."""
        if self.fingerprint is not None:
            self.fingerprint.prepare()
        path = self.latest()
        if path is None:
            logger.info("no %s checkpoint in %s: starting from epoch 1", self.prefix, self.ckpt_dir)
            return
        logger.info("resuming %s from %s", self.prefix, path)
        load_checkpoint(path, f"delete it to restart the {self.prefix} run from epoch 1", map_location="cpu")
        CheckpointLoader(load_path=str(path), load_dict=save, map_location=self.map_location)(engine)

    def _save_last_epoch(self, engine: Engine, saver: CheckpointSaver) -> None:
        """Save the final epoch unless the periodic saver just did."""
        if engine.state.epoch % self.interval:
            saver.interval_completed(engine)


class NamedCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` whose error for an unreadable file names it and says what to do.

    Args:
        load_path: the checkpoint (read when the engine starts, not when the config is parsed).
        remedy: what the user can do when the file is damaged.
        kwargs: ``CheckpointLoader`` arguments (``load_dict``, ``map_location``, ...).
    """

    def __init__(self, load_path: str, remedy: str, **kwargs: Any) -> None:
        super().__init__(load_path=load_path, **kwargs)
        self.remedy = remedy

    def __call__(self, engine: Engine) -> None:
        load_checkpoint(self.load_path, self.remedy, map_location="cpu", weights_only=True)
        super().__call__(engine)


class BestModelState:
    """The best-model record of a validation run, as one object a periodic checkpoint can save and restore.

    It holds the evaluator's ``best_metric`` / ``best_metric_epoch`` (MONAI's "new best" bookkeeping) and the
    ``CheckpointSaver``'s list of saved key-metric files with their scores. Without them a resumed run starts
    from an empty record, and its first validation replaces ``model.pt`` even when it is worse.

    Args:
        evaluator: the validation engine (a MONAI ``Workflow``).
        saver: the ``CheckpointSaver`` writing ``model.pt`` on the key metric.
    """

    def __init__(self, evaluator: Engine, saver: CheckpointSaver) -> None:
        if saver._key_metric_checkpoint is None:
            raise ValueError("BestModelState needs a CheckpointSaver with save_key_metric=True")
        self.evaluator = evaluator
        self.saver = saver

    def state_dict(self) -> dict[str, Any]:
        """``{"best_metric", "best_metric_epoch", "saved": [(score, file name), ...]}`` (plain Python values)."""
        saved = self.saver._key_metric_checkpoint.state_dict()["_saved"]
        return {
            "best_metric": float(self.evaluator.state.best_metric),
            "best_metric_epoch": int(self.evaluator.state.best_metric_epoch),
            "saved": [(float(score), str(name)) for score, name in saved],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.evaluator.state.best_metric = state["best_metric"]
        self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]
        self.saver.load_state_dict({"_saved": [tuple(item) for item in state["saved"]]})


class LearningCurveWriter:
    """Ignite handler for a trainer: mean training loss and the evaluator's key metric per epoch.

    Attach it after the ``ValidationHandler`` so that the evaluator has run when the epoch's row is written.
    Only rank 0 writes under ``torch.distributed``.

    Args:
        evaluator: the validation engine; its ``state.metrics[key_metric]`` is read after validation epochs.
        output_dir: folder of ``<name>.csv`` and ``<name>.png``.
        key_metric: evaluator metric reported as ``val_dice``.
        name: file stem.
        regions: names of the key metric's channels (e.g. ``("ET", "TC", "WT")``, see
            :class:`~transrisk_components.bundle.metrics.RegionChannels`); each gets a column ``val_dice_<region>``,
            the mean over validation cases of that channel's Dice (from the metric's per-case details, MONAI's
            ``save_details``). Empty: no region columns.
    """

    def __init__(
        self,
        evaluator: Engine,
        output_dir: str,
        key_metric: str = "val_mean_dice",
        name: str = "learning_curves",
        regions: Sequence[str] = (),
    ) -> None:
        self.evaluator = evaluator
        self.csv_path = Path(output_dir) / f"{name}.csv"
        self.png_path = Path(output_dir) / f"{name}.png"
        self.key_metric = key_metric
        self.columns = ["epoch", "train_loss", "val_dice", *(f"val_dice_{r}" for r in regions)]
        self.rows: list[dict[str, float]] = []
        self._losses: list[float] = []
        self._validated_at = -1

    def attach(self, engine: Engine) -> None:
        """Collect losses every iteration, write the curves every epoch and draw them at the end."""
        engine.add_event_handler(Events.STARTED, self._keep_resumed_rows)
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self._losses.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect_loss)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write_epoch)
        engine.add_event_handler(Events.COMPLETED, self._draw)
        self.evaluator.add_event_handler(Events.COMPLETED, lambda _: setattr(self, "_validated_at", engine.state.epoch))

    def _keep_resumed_rows(self, engine: Engine) -> None:
        """Keep the rows of the epochs a resumed run already did (none for a fresh run, which starts at 0)."""
        if not self.csv_path.is_file():
            return
        columns = read_learning_curves(self.csv_path)
        rows = [{c: columns.get(c, [math.nan] * len(columns["epoch"]))[i] for c in self.columns}
                for i in range(len(columns["epoch"]))]
        self.rows = [row for row in rows if row["epoch"] <= engine.state.epoch]

    def _collect_loss(self, engine: Engine) -> None:
        output = engine.state.output
        loss = output[0]["loss"] if isinstance(output, list) else output["loss"]
        self._losses.append(float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss))

    def _validation_values(self) -> list[float]:
        """``val_dice`` and the per-region means of the last validation (NaN where there is none)."""
        n_regions = len(self.columns) - 3
        metrics = self.evaluator.state.metrics
        details = getattr(self.evaluator.state, "metric_details", {}).get(self.key_metric)
        regions = [math.nan] * n_regions
        if n_regions and details is not None:
            per_case = torch.as_tensor(details, dtype=torch.float64).reshape(-1, n_regions)
            regions = [float(v) for v in per_case.nanmean(dim=0)]
        return [float(metrics.get(self.key_metric, math.nan)), *regions]

    def _write_epoch(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        loss = sum(self._losses) / len(self._losses) if self._losses else math.nan
        validation = self._validation_values() if self._validated_at == epoch else [math.nan] * (len(self.columns) - 2)
        self.rows.append(dict(zip(self.columns, [epoch, loss, *validation], strict=True)))
        if is_rank0():
            buffer = io.StringIO(newline="")
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(self.columns)
            for row in self.rows:
                writer.writerow([int(row["epoch"]), *("" if math.isnan(row[c]) else f"{row[c]:.6g}" for c in self.columns[1:])])
            atomic_write_text(self.csv_path, buffer.getvalue())

    def _draw(self, _: Engine) -> None:
        if is_rank0() and self.csv_path.is_file():
            plot_learning_curves(self.csv_path, self.png_path)


def write_case_csv(scores: Sequence[CaseScore], path: str | os.PathLike) -> Path:
    """Write one row per (case, region), atomically: ``case_id,region,dice,hd95,asd`` (NaN as ``nan``)."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=[f.name for f in fields(CaseScore)], lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(s) for s in scores)
    return atomic_write_text(path, buffer.getvalue())


def write_summary_json(summary: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a summary (see :func:`summarise`) atomically, as strict JSON (``None`` where a value is missing)."""
    return atomic_write_text(path, json.dumps(summary, indent=2, allow_nan=False) + "\n")


def _items(data: Any) -> list[Any]:
    """A decollated list stays a list; a batched tensor becomes a list of ``[C, *S]`` items."""
    return list(data) if isinstance(data, (list, tuple)) else [data[i] for i in range(len(data))]


def _case_id(batch_item: Any, label: torch.Tensor, key: str) -> str:
    if isinstance(batch_item, Mapping) and key in batch_item:
        return str(batch_item[key])
    source = label.meta.get("filename_or_obj") if isinstance(label, MetaTensor) else None
    if source:
        name = Path(str(source)).name
        return name.split(".", 1)[0]
    raise ValueError(f"no case id: the batch has no {key!r} key and the label carries no filename_or_obj")


class RegionMetricsWriter:
    """Ignite handler: per-case region metrics of a MONAI evaluator, written when its epoch completes.

    Attach to a ``SupervisedEvaluator``; in a bundle config::

        {"_target_": "transrisk_components.bundle.handlers.RegionMetricsWriter",
         "output_dir": "@output_dir", "dataset": "fets", "task": "multiclass"}

    Per iteration it reads ``pred`` and ``label`` from ``engine.state.output`` (decollated list of dicts
    or a batched dict), the case id from ``engine.state.batch`` (``case_id_key``, falling back to the
    label's ``filename_or_obj`` without extension), and the voxel spacing from the label's affine
    (``MetaTensor``; plain tensors are scored in voxel units). ``pred`` may be logits / probabilities /
    one-hot ``[C, *S]`` per case, or a class map ``[1, *S]`` after ``AsDiscreted(argmax=True)``; labels are
    class maps in the task's classes (or one-hot). At ``EPOCH_COMPLETED`` (the end of an evaluator run)
    it writes ``csv_name`` and ``summary_name`` under ``output_dir``, replacing earlier files.

    Under ``torch.distributed`` the rows of all ranks are gathered before rank 0 writes, as MONAI's
    ``MetricsSaver`` does: attach the handler on **every** rank (a config that gives ``val_handlers`` to
    rank 0 only must keep this handler out of that list, or the gather waits forever).

    Args:
        output_dir: folder for the reports (created if missing).
        dataset: ``"fets"`` or ``"iseg"``.
        task: ``"multiclass"`` or a region name.
        output_transform: ``engine.state.output`` -> ``(pred, label)``.
        case_id_key: batch key holding the case id.
        csv_name: per-case CSV file name (``case_id,region,dice,hd95,asd``).
        summary_name: summary JSON file name.
        model_file: the checkpoint the evaluator's network was loaded from; the summary then names it
            (``"model": {"file", "sha256"}``), so that its numbers can be tied to one model (e.g. by the Model Zoo
            export's ``eval_metrics``).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        dataset: str,
        task: str,
        output_transform: Callable[[Any], tuple[Any, Any]] = from_engine(["pred", "label"]),
        case_id_key: str = "case_id",
        csv_name: str = "metrics_per_case.csv",
        summary_name: str = "metrics_summary.json",
        model_file: str | os.PathLike | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.model_file = Path(model_file) if model_file is not None else None
        self.metrics = RegionMetrics(dataset, task)
        self.output_transform = output_transform
        self.case_id_key = case_id_key
        self.csv_name, self.summary_name = csv_name, summary_name

    def attach(self, engine: Engine) -> None:
        """Register the reset / update / write callbacks on ``engine``."""
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        """Start a new run."""
        self.metrics.reset()

    def update(self, engine: Engine) -> None:
        """Score the cases of the engine's current batch."""
        preds, labels = (_items(x) for x in self.output_transform(engine.state.output))
        for pred, label, item in zip(preds, labels, self._batch_items(engine.state.batch, len(preds)), strict=True):
            spatial = label.ndim - 1
            spacing = [voxel_spacing(label.affine)[:spatial]] if isinstance(label, MetaTensor) else None
            case_id = _case_id(item, label, self.case_id_key)
            self.metrics.update(pred.unsqueeze(0), label.unsqueeze(0), [case_id], spacing)

    def _batch_items(self, batch: Any, n_items: int) -> list[Any]:
        """Per-case views of ``engine.state.batch``: decollated dicts, or dicts holding only the case id."""
        if isinstance(batch, (list, tuple)):
            return list(batch)
        if isinstance(batch, Mapping) and self.case_id_key in batch:
            return [{self.case_id_key: v} for v in batch[self.case_id_key]]
        return [{}] * n_items

    def write(self, engine: Engine | None = None) -> tuple[Path, Path]:
        """Write the per-case CSV and the summary JSON; returns their paths.

        Under ``torch.distributed`` the rows of all ranks are gathered (a case scored twice, as a padding
        sampler may do, counts once) and rank 0 alone writes.
        """
        csv_path, json_path = self.output_dir / self.csv_name, self.output_dir / self.summary_name
        scores = _gather_scores(self.metrics.scores)
        if is_rank0():
            write_case_csv(scores, csv_path)
            summary: dict[str, Any] = {"dataset": self.metrics.dataset, "task": self.metrics.task}
            if self.model_file is not None:
                summary["model"] = {"file": str(self.model_file.resolve()), "sha256": file_sha256(self.model_file)}
            write_summary_json({**summary, **summarise(scores, self.metrics.regions)}, json_path)
        return csv_path, json_path


def _gather_scores(scores: Sequence[CaseScore]) -> list[CaseScore]:
    """All ranks' rows in rank order, each (case, region) once; ``scores`` itself when not distributed."""
    if not is_distributed():
        return list(scores)
    parts: list[list[CaseScore]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(parts, list(scores))
    unique: dict[tuple[str, str], CaseScore] = {}
    for part in parts:
        for score in part:
            unique.setdefault((score.case_id, score.region), score)
    return list(unique.values())
