"""Learning curves of a training run: one CSV row per epoch and a PNG, kept up to date as training goes.

The CSV has the columns ``epoch,train_loss,val_dice`` that :func:`transrisk_components.figures.plot_learning_curves`
reads (``val_dice`` blank on epochs without validation).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from transrisk_components.distributed import is_rank0
from transrisk_components.figures import plot_learning_curves, read_learning_curves
from transrisk_components.io_utils import atomic_write_text

__all__ = ["LearningCurveWriter"]


class LearningCurveWriter:
    """Ignite handler for a trainer: mean training loss and the evaluator's key metric per epoch.

    Attach it after the ``ValidationHandler`` so that the evaluator has run when the epoch's row is written.
    Only rank 0 writes under ``torch.distributed``.

    Args:
        evaluator: the validation engine; its ``state.metrics[key_metric]`` is read after validation epochs.
        output_dir: folder of ``<name>.csv`` and ``<name>.png``.
        key_metric: evaluator metric reported as ``val_dice``.
        name: file stem.
    """

    def __init__(self, evaluator: Engine, output_dir: str, key_metric: str = "val_mean_dice", name: str = "learning_curves") -> None:
        self.evaluator = evaluator
        self.csv_path = Path(output_dir) / f"{name}.csv"
        self.png_path = Path(output_dir) / f"{name}.png"
        self.key_metric = key_metric
        self.rows: list[tuple[int, float, float]] = []
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
        rows = zip(columns["epoch"], columns["train_loss"], columns["val_dice"])
        self.rows = [(int(e), l, v) for e, l, v in rows if e <= engine.state.epoch]

    def _collect_loss(self, engine: Engine) -> None:
        output = engine.state.output
        loss = output[0]["loss"] if isinstance(output, list) else output["loss"]
        self._losses.append(float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss))

    def _write_epoch(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        loss = sum(self._losses) / len(self._losses) if self._losses else math.nan
        val = float(self.evaluator.state.metrics.get(self.key_metric, math.nan)) if self._validated_at == epoch else math.nan
        self.rows.append((epoch, loss, val))
        if is_rank0():
            buffer = io.StringIO(newline="")
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(["epoch", "train_loss", "val_dice"])
            writer.writerows([e, f"{l:.6g}", "" if math.isnan(v) else f"{v:.6g}"] for e, l, v in self.rows)
            atomic_write_text(self.csv_path, buffer.getvalue())

    def _draw(self, _: Engine) -> None:
        if is_rank0() and self.csv_path.is_file():
            plot_learning_curves(self.csv_path, self.png_path)
