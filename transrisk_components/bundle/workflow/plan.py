"""What a run does with each stage's outputs, decided before any stage starts.

For a stage whose outputs have a fixed place (``models/source.pt``, ``models/model.pt``, a candidate's folder),
:func:`decide` compares the stage's fingerprint (:mod:`.fingerprint`) with the record beside its outputs:

- ``"reuse"``: the record is this fingerprint's, the run finished at the asked length, the outputs are there, and
  every stage it builds on is reused too;
- ``"resume"``: the same, but the run stopped before its end, or a longer run is asked (it continues from its
  newest checkpoint, with the random states of that moment);
- ``"run"``: nothing is there yet;
- ``"redo"``: outputs of ours are there but made otherwise (other settings, inputs or upstream stages, or a longer
  run than asked): they are deleted and the stage runs again -- only with ``--overwrite true``; without it the run
  stops with :class:`~transrisk_components.bundle.io.records.StaleOutputError` naming every difference.

Files no record of ours names stop the run with
:class:`~transrisk_components.bundle.io.records.ForeignOutputError` whatever ``--overwrite`` says: the bundle never
deletes or changes a file it did not make.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transrisk_components.bundle.io.records import (
    RECORD_SUFFIX,
    ForeignOutputError,
    StaleOutputError,
    named_by_a_record,
    read_record,
    write_record,
)
from transrisk_components.bundle.workflow.fingerprint import differences, digest, identity
from transrisk_components.bundle.workflow.stage import StageConfig
from transrisk_components.utils.distributed import barrier, is_rank0
from transrisk_components.utils.io import load_checkpoint

__all__ = ["DECISIONS", "StagePlan", "decide", "latest_checkpoint_epoch", "release_outputs"]

logger = logging.getLogger(__name__)

DECISIONS = ("reuse", "resume", "run", "redo")
_MAX_LISTED = 12
_EPOCH = re.compile(r"_checkpoint_epoch=(\d+)\.pt$")


def latest_checkpoint_epoch(folder: Path) -> int | None:
    """The epoch of the newest periodic checkpoint in ``folder``, or ``None``."""
    epochs = [int(m.group(1)) for p in folder.glob("*_checkpoint_epoch=*.pt") if (m := _EPOCH.search(p.name))]
    return max(epochs) if epochs else None


def _present(paths: Sequence[Path]) -> list[Path]:
    """The outputs that exist (a folder counts when it holds something)."""
    return [p for p in paths if p.is_file() or (p.is_dir() and any(p.iterdir()))]


def _listed(lines: Sequence[str], record: Path) -> str:
    shown = list(lines[:_MAX_LISTED])
    if len(lines) > len(shown):
        shown.append(f"... and {len(lines) - len(shown)} more (see {record})")
    return "\n  ".join(shown)


@dataclass
class StagePlan:
    """One stage of a run and what the run does with it.

    Attributes:
        config: the stage's child workflow.
        fingerprint: its fingerprint (:func:`~transrisk_components.bundle.workflow.fingerprint.stage_fingerprint`).
        record: the record beside its outputs (``<stage>.fingerprint.json``).
        outputs: the files and folders it writes, relative to nothing (absolute paths).
        required: the outputs a finished run must have left (e.g. ``model.pt``).
        checkpoints: the folder of its periodic checkpoints (its progress when it stopped).
        epochs: the length asked (``max_epochs`` / ``source_epochs``).
        decision: one of :data:`DECISIONS`.
        reasons: why it is redone (the fingerprint's differences).
        request: the overrides the run was given (recorded, so that a later command can name them).
        rebuilt_from_checkpoint: whether a finished run's missing ``required`` outputs are made again from its last
            checkpoint (the source model: its final weights), rather than by running the stage again (a fine-tuning
            run's best model is not its last epoch).
    """

    config: StageConfig
    fingerprint: dict[str, Any]
    record: Path
    outputs: tuple[Path, ...]
    required: tuple[Path, ...]
    checkpoints: Path | None
    epochs: int | None
    decision: str = "run"
    reasons: list[str] = field(default_factory=list)
    request: Mapping[str, Any] = field(default_factory=dict)
    rebuilt_from_checkpoint: bool = False

    @property
    def digest(self) -> str:
        """The fingerprint's digest: what stages built on this one record of it."""
        return digest(self.fingerprint)

    def start(self) -> None:
        """Before the stage runs: delete what a redo replaces (rank 0), and record the fingerprint as unfinished."""
        if self.decision == "reuse":
            return
        barrier()
        if is_rank0():
            if self.decision == "redo":
                release_outputs(_present(self.outputs))
            write_record(self.record, self._record(complete=False))
        barrier()

    def finish(self) -> None:
        """After the stage ran: record it as finished at its length (rank 0)."""
        if is_rank0():
            write_record(self.record, self._record(complete=True))
        barrier()

    def _record(self, complete: bool) -> dict[str, Any]:
        folder = self.record.resolve().parent
        outputs = sorted(str(p.resolve().relative_to(folder)) if folder in p.resolve().parents else str(p) for p in self.outputs)
        return {**self.fingerprint, "outputs": outputs, "complete": complete, "epochs": self.epochs,
                "request": {"overrides": dict(self.request)}}


def release_outputs(paths: Sequence[Path]) -> None:
    """Delete outputs of ours and strike them from every record beside them that names them (a record that then
    names nothing is deleted): a record must not name a file another stage writes next."""
    for path in paths:
        resolved = path.resolve()
        for record_path in sorted(resolved.parent.glob(f"*{RECORD_SUFFIX}")):
            record = read_record(record_path)
            if record is None or "outputs" not in record:
                continue
            folder = record_path.resolve().parent
            kept = [name for name in record["outputs"] if (folder / name).resolve() != resolved]
            if len(kept) == len(record["outputs"]):
                continue
            if kept:
                write_record(record_path, {**record, "outputs": kept})
            else:
                record_path.unlink()
        if path.is_dir():
            for item in path.iterdir():  # emptied, not removed: a saver built with the trainer writes into it
                shutil.rmtree(item) if item.is_dir() else item.unlink()
        else:
            path.unlink(missing_ok=True)


def decide(plan: StagePlan, overwrite: bool, upstream_reused: bool, builds_on: Sequence[Path] = ()) -> StagePlan:
    """Set ``plan.decision`` (see the module docstring) and return ``plan``.

    Args:
        plan: the stage, its fingerprint and outputs.
        overwrite: ``--overwrite true``: redo a stage whose outputs were made otherwise.
        upstream_reused: whether every stage this one builds on is reused (a stage built on one that runs again is
            not reused, even with an equal fingerprint).
        builds_on: files the stage reads (the source checkpoint): a redo that would delete one of them is refused.

    Raises:
        ForeignOutputError: outputs sit there that no record of ours names.
        StaleOutputError: outputs of ours were made otherwise and ``overwrite`` is false.
        ValueError: a redo would delete a file the stage builds on.
    """
    present = _present(plan.outputs)
    foreign = [p for p in present if not named_by_a_record(p, [plan.record])]
    if foreign:
        raise ForeignOutputError(
            f"the {plan.config.name} stage would write {', '.join(map(str, foreign))}, which no fingerprint record of "
            "this bundle names: files the bundle did not make (your own, or a downloaded model) are never deleted or "
            "changed, whatever --overwrite says. Move them elsewhere yourself, or pass another --bundle_root."
        )
    if not present:
        plan.decision = "run"
        return plan
    old = read_record(plan.record)
    same = old is not None and identity(old) == identity(plan.fingerprint)
    if same and upstream_reused:
        complete = bool(old.get("complete"))
        done = old.get("epochs") if complete else latest_checkpoint_epoch(plan.checkpoints) if plan.checkpoints else None
        missing = [p for p in plan.required if not p.is_file()]
        if complete and done == plan.epochs and not missing:
            for path in plan.required:
                if path.suffix == ".pt":
                    load_checkpoint(path, f"delete it and run again: the {plan.config.name} stage makes it again",
                                    map_location="cpu", weights_only=True)
            plan.decision = "reuse"
            return plan
        if complete and missing and plan.rebuilt_from_checkpoint:
            plan.decision = "resume"
            return plan
        if complete and missing:
            plan.decision, plan.reasons = "redo", [f"{', '.join(map(str, missing))} missing"]
            return plan
        if done is None or plan.epochs is None or done <= plan.epochs:
            plan.decision = "resume"
            if complete and done is not None and plan.epochs is not None and done < plan.epochs:
                plan.reasons = [f"a finished run of {done} epochs continues to the {plan.epochs} asked"]
            return plan
        reasons = [f"epochs: {done} done -> {plan.epochs} asked (its best model may come from an epoch this run does not reach)"]
    elif same:
        reasons = ["a stage it builds on runs again"]
    elif old is not None and "config" not in old:
        reasons = [f"made by transrisk {old.get('version')}, whose fingerprints are not comparable with this version's"]
    else:
        reasons = differences(old, plan.fingerprint)
    plan.reasons = reasons
    if not overwrite:
        raise StaleOutputError(
            f"the {plan.config.name} stage's outputs ({', '.join(map(str, present))}) were made otherwise than this run "
            f"would make them, so they are not reused. Differences (recorded -> now):\n  {_listed(reasons, plan.record)}\n"
            f"Either pass --overwrite true to redo the stage in place (its outputs are deleted; stages whose "
            f"fingerprint still matches are kept), or pass another --bundle_root to keep both."
        )
    for read in builds_on:
        read = read.resolve()
        for output in present:
            if output.resolve() == read or output.resolve() in read.parents:
                raise ValueError(
                    f"the {plan.config.name} stage builds on {read}, which is also one of its outputs ({output}): "
                    f"--overwrite would delete it. Copy it elsewhere and point source_ckpt there."
                )
    plan.decision = "redo"
    return plan
