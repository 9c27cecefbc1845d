"""The learning curves of a fine-tuning run: ``learning_curves.csv`` (one row per epoch) and its PNG."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from transrisk_components.bundle.handlers.metrics import region_names
from transrisk_components.reporting.figures import plot_learning_curves, read_learning_curves
from transrisk_components.utils.distributed import is_rank0
from transrisk_components.utils.io import atomic_write_text

__all__ = ["LearningCurveWriter"]


class LearningCurveWriter:
    """Ignite handler for a trainer: mean training loss and the evaluator's key metric per epoch.

    Attach it after the ``ValidationHandler`` so that the evaluator has run when the epoch's row is written.
    Only rank 0 writes under ``torch.distributed``.

    Args:
        evaluator: the validation engine; its ``state.metrics[key_metric]`` is read after validation epochs.
        output_dir: folder of ``<name>.csv`` and ``<name>.png``.
        dataset, task: the dataset and target task: the key metric's channels are the task's regions (e.g. ``ET``,
            ``TC``, ``WT``, see :class:`~transrisk_components.bundle.handlers.metrics.RegionChannels`); each gets a
            column ``val_dice_<region>``, the mean over validation cases of that channel's Dice (from the metric's
            per-case details, MONAI's ``save_details``).
        key_metric: evaluator metric reported as ``val_dice``.
        name: file stem.
        title: the figure's title (e.g. the run or candidate name).
    """

    def __init__(
        self,
        evaluator: Engine,
        output_dir: str,
        dataset: str,
        task: str,
        key_metric: str = "val_mean_dice",
        name: str = "learning_curves",
        title: str = "",
    ) -> None:
        self.evaluator = evaluator
        self.csv_path = Path(output_dir) / f"{name}.csv"
        self.png_path = Path(output_dir) / f"{name}.png"
        self.key_metric = key_metric
        self.title = title
        self.columns = ["epoch", "train_loss", "val_dice", *(f"val_dice_{r}" for r in region_names(dataset, task))]
        self.rows: list[dict[str, float]] = []
        self._losses: list[float] = []
        self._validated_at = -1
        self._resumed = False

    def attach(self, engine: Engine) -> None:
        """Collect losses every iteration, write the curves every epoch and draw them at the end."""
        engine.add_event_handler(Events.STARTED, lambda _: setattr(self, "_resumed", False))
        engine.add_event_handler(Events.EPOCH_STARTED, self._keep_resumed_rows)
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self._losses.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect_loss)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write_epoch)
        engine.add_event_handler(Events.COMPLETED, self._draw)
        self.evaluator.add_event_handler(Events.COMPLETED, lambda _: setattr(self, "_validated_at", engine.state.epoch))

    def _keep_resumed_rows(self, engine: Engine) -> None:
        """At the first epoch of a run, keep the rows of the epochs a resumed run already did (none for a fresh run):
        by then every handler that restores a checkpoint at ``Events.STARTED`` has set the engine's epoch."""
        if self._resumed:
            return
        self._resumed = True
        if not self.csv_path.is_file():
            return
        columns = read_learning_curves(self.csv_path)
        rows = [{c: columns.get(c, [math.nan] * len(columns["epoch"]))[i] for c in self.columns}
                for i in range(len(columns["epoch"]))]
        self.rows = [row for row in rows if row["epoch"] < engine.state.epoch]

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
            plot_learning_curves(self.csv_path, self.png_path, title=self.title)
