"""Per-case region metrics of an evaluator, written as a CSV and summarised as JSON when its run completes."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.handlers import from_engine

from transrisk_components.bundle.handlers.metrics import CaseScore, RegionMetrics, summarise, voxel_spacing
from transrisk_components.utils.distributed import is_distributed, is_rank0
from transrisk_components.utils.io import atomic_write_text, file_sha256

__all__ = ["RegionMetricsWriter", "summary_table", "write_case_csv", "write_summary_json"]

logger = logging.getLogger(__name__)


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


def summary_table(summary: Mapping[str, Any], path: str | os.PathLike) -> str:
    """The lines an evaluation ends with: per region the mean +- SD over cases of Dice (%), HD95 and ASD (mm), and
    where the files are (``path``: the summary JSON; the per-case CSV beside it)."""
    lines = [f"evaluation on {summary['n_cases']} cases ({summary.get('model', {}).get('file', 'model')}), mean +- SD over cases:"]
    for region, metrics in summary["regions"].items():
        parts = []
        for metric, scale, unit in (("dice", 100.0, "%"), ("hd95", 1.0, " mm"), ("asd", 1.0, " mm")):
            stats = metrics[metric]
            if stats["mean"] is None:
                parts.append(f"{metric} n/a")
                continue
            nan = f" ({stats['n_nan']} cases without a value)" if stats["n_nan"] else ""
            parts.append(f"{metric} {scale * stats['mean']:.1f} +- {scale * stats['std']:.1f}{unit}{nan}")
        lines.append(f"  {region}: " + ", ".join(parts))
    lines.append(f"  per case: {Path(path).with_name(Path(path).name.replace('summary.json', 'per_case.csv'))}; summary: {path}")
    return "\n".join(lines)


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

        {"_target_": "transrisk_components.bundle.handlers.metric_files.RegionMetricsWriter",
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
        print_summary: end with a table of the mean Dice, HD95 and ASD per region in the log (rank 0).
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
        print_summary: bool = False,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.model_file = Path(model_file) if model_file is not None else None
        self.metrics = RegionMetrics(dataset, task)
        self.output_transform = output_transform
        self.case_id_key = case_id_key
        self.csv_name, self.summary_name = csv_name, summary_name
        self.print_summary = bool(print_summary)

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
            summary = {**summary, **summarise(scores, self.metrics.regions)}
            write_summary_json(summary, json_path)
            if self.print_summary:
                logger.info("%s", summary_table(summary, json_path))
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
