"""Checkpoints of a training stage that a killed run resumes from exactly, and a loader that names what went wrong.

- :class:`ResumableCheckpoints` -- the model, the optimiser, the engine, the best-model record and every random
  number generator the run draws from, saved every ``interval`` epochs; restored when a killed run restarts, so that
  the resumed run continues with the numbers the uninterrupted run would have drawn (bit-identical on CPU).
- :class:`BestModelState` -- the best validation metric so far and the ``model.pt`` saver's record of it.
- :class:`RandomStates` -- the state of torch's, CUDA's, numpy's and Python's generators and of every random
  transform of the training loader.
- :class:`NamedCheckpointLoader` -- MONAI's ``CheckpointLoader`` whose errors name the file and the remedy: an
  unreadable file, or a network of another architecture (naming the overrides the model was trained with).

Which outputs a stage may resume from is the run's decision (:mod:`transrisk_components.bundle.workflow.plan`),
taken before the stage starts; these handlers only do what it decided.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.transforms import Randomizable

from transrisk_components.bundle.io.records import RECORD_SUFFIX, read_record
from transrisk_components.utils.distributed import is_rank0
from transrisk_components.utils.io import load_checkpoint

__all__ = ["BestModelState", "NamedCheckpointLoader", "RandomStates", "ResumableCheckpoints", "network_mismatch_remedy"]

logger = logging.getLogger(__name__)

_EPOCH = re.compile(r"_epoch=(\d+)\.pt$")


def _random_transforms(root: Any) -> list[Randomizable]:
    """Every ``Randomizable`` object reachable from ``root`` through attributes and lists, in a fixed order (the
    order of the attributes), each once: the transforms of a ``Compose`` and the array transforms a dictionary
    transform holds (e.g. ``RandCropByPosNegLabeld``'s cropper), each with its own generator ``R``."""
    found: list[Randomizable] = []
    seen: set[int] = set()

    def visit(obj: Any) -> None:
        if id(obj) in seen or isinstance(obj, (str, bytes, torch.Tensor, np.ndarray)):
            return
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item)
            return
        if not hasattr(obj, "__dict__"):
            return
        if isinstance(obj, Randomizable):
            found.append(obj)
        for key, value in vars(obj).items():
            if not key.startswith("__"):
                visit(value)

    visit(root)
    return found


def _numpy_state(state: tuple) -> dict[str, Any]:
    """A ``numpy.random.RandomState.get_state()`` tuple as values ``torch.load(weights_only=True)`` reads."""
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_tuple(state: Mapping[str, Any]) -> tuple:
    """The inverse of :func:`_numpy_state`."""
    keys = state["keys"].numpy().astype(np.uint32)
    return state["name"], keys, state["pos"], state["has_gauss"], state["cached"]


class RandomStates:
    """The generators a training run draws from, as one object a checkpoint saves and restores.

    Saved: torch's global generator (network initialisation, the loader's shuffling and its workers' seeds), CUDA's,
    numpy's and Python's global generators, and the generator ``R`` of every random transform of the training loader
    (with ``num_workers 0`` MONAI's transforms draw from their own generators in this process).

    Args:
        engine: the trainer (its ``data_loader.dataset.transform`` holds the random transforms); set by
            :class:`ResumableCheckpoints` when it attaches.
    """

    def __init__(self) -> None:
        self.engine: Engine | None = None

    def _transforms(self) -> list[Randomizable]:
        dataset = getattr(getattr(self.engine, "data_loader", None), "dataset", None)
        return _random_transforms(getattr(dataset, "transform", None))

    def state_dict(self) -> dict[str, Any]:
        """The generators' states, as tensors and plain values."""
        python_version, python_state, python_gauss = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": _numpy_state(np.random.get_state()),
            "python": [python_version, list(python_state), python_gauss],
            "transforms": [_numpy_state(t.R.get_state()) for t in self._transforms()],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises:
            ValueError: the checkpoint holds another number of random transforms than the loader has (another
                pipeline made it).
        """
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        np.random.set_state(_numpy_tuple(state["numpy"]))
        python_version, python_state, python_gauss = state["python"]
        random.setstate((python_version, tuple(python_state), python_gauss))
        transforms = self._transforms()
        if len(transforms) != len(state["transforms"]):
            raise ValueError(
                f"the checkpoint holds the generators of {len(state['transforms'])} random transforms, the training "
                f"loader has {len(transforms)}: it was made by another pipeline"
            )
        for transform, saved in zip(transforms, state["transforms"], strict=True):
            transform.R.set_state(_numpy_tuple(saved))


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


class ResumableCheckpoints:
    """Ignite handler: checkpoint a training stage every ``interval`` epochs and at the end; resume from the newest
    checkpoint when the trainer starts.

    Files are ``<ckpt_dir>/<prefix>_checkpoint_epoch=N.pt``: the newest is kept and the others are deleted, also those
    of an earlier, interrupted run (ignite writes on rank 0 only). A run killed mid-way restarts at the epoch after
    its newest checkpoint, with the model, the optimiser, the best-model record and the random generators
    (:class:`RandomStates`) of that moment, so it goes on as the uninterrupted run did. A run asked for more epochs
    continues a finished one.

    Attach it after the trainer's ``ValidationHandler`` and ``LearningCurveWriter``: handlers run in the order they
    were attached, and an epoch's checkpoint must hold the record and the random states after that epoch's
    validation.

    Args:
        ckpt_dir: folder of the periodic checkpoints.
        network: the network trained (a DDP wrapper's module too).
        optimizer: its optimiser.
        prefix: checkpoint file prefix.
        interval: epochs between checkpoints (a full model + optimiser + trainer state each time).
        evaluator: the validation engine, when the trainer validates: its best-model record is saved too.
        best_model_saver: the evaluator's ``CheckpointSaver`` of ``model.pt`` (with ``evaluator``).
        map_location: where loaded tensors go.

    Raises:
        ValueError: ``interval < 1``, or ``evaluator`` without ``best_model_saver``.
    """

    def __init__(
        self,
        ckpt_dir: str,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        prefix: str,
        interval: int = 1,
        evaluator: Engine | None = None,
        best_model_saver: CheckpointSaver | None = None,
        map_location: str | None = "cpu",
    ) -> None:
        if int(interval) < 1:
            raise ValueError(f"checkpoint interval must be >= 1 epoch, got {interval}")
        if (evaluator is None) != (best_model_saver is None):
            raise ValueError("ResumableCheckpoints: give both evaluator and best_model_saver, or neither")
        self.ckpt_dir = Path(ckpt_dir)
        self.random_states = RandomStates()
        self.objects: dict[str, Any] = {"model": network, "optimizer": optimizer, "random_states": self.random_states}
        if evaluator is not None:
            self.objects["best"] = BestModelState(evaluator, best_model_saver)
        self.prefix = prefix
        self.interval = int(interval)
        self.map_location = map_location

    def checkpoints(self) -> Iterator[tuple[int, Path]]:
        """``(epoch, path)`` of every periodic checkpoint in the folder."""
        for path in self.ckpt_dir.glob(f"{self.prefix}_checkpoint_epoch=*.pt"):
            match = _EPOCH.search(path.name)
            if match:
                yield int(match.group(1)), path

    def latest(self) -> Path | None:
        """The newest checkpoint file, or ``None``."""
        found = sorted(self.checkpoints())
        return found[-1][1] if found else None

    def attach(self, engine: Engine) -> None:
        """Attach the saver and, at ``Events.STARTED``, the resume from the newest checkpoint.

        Nothing is read or written before the trainer runs, so the trainer can be built on a fresh bundle folder
        (MONAI's ``check_properties`` builds it).
        """
        self.random_states.engine = engine
        save = {**self.objects, "trainer": engine}
        engine.add_event_handler(Events.STARTED, self._resume, save)
        # built on every rank: ignite writes on rank 0 only, and its first rank query is a collective call
        saver = CheckpointSaver(
            save_dir=str(self.ckpt_dir), save_dict=save, file_prefix=self.prefix, save_interval=self.interval, n_saved=1
        )
        saver.attach(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._prune)
        engine.add_event_handler(Events.COMPLETED, self._save_last_epoch, saver)

    def _resume(self, engine: Engine, save: dict) -> None:
        """Restore the newest checkpoint, if any."""
        path = self.latest()
        if path is None:
            logger.info("no %s checkpoint in %s: starting from epoch 1", self.prefix, self.ckpt_dir)
            return
        logger.info("resuming %s from %s", self.prefix, path)
        load_checkpoint(path, f"delete it to restart the {self.prefix} run from epoch 1", map_location="cpu")
        CheckpointLoader(load_path=str(path), load_dict=save, map_location=self.map_location)(engine)

    def _prune(self, engine: Engine) -> None:
        """Delete every checkpoint but the newest (those an interrupted run left among them)."""
        if not is_rank0():
            return
        found = sorted(self.checkpoints())
        for _, path in found[:-1]:
            path.unlink(missing_ok=True)

    def _save_last_epoch(self, engine: Engine, saver: CheckpointSaver) -> None:
        """Save the final epoch unless the periodic saver just did."""
        if engine.state.epoch % self.interval:
            saver.interval_completed(engine)
            self._prune(engine)


def network_mismatch_remedy(model_file: str | Path) -> str:
    """What to pass so that the config builds the network ``model_file`` was trained with: the ``network_def``
    overrides its training run was given, from the fingerprint record beside it that names it."""
    path = Path(model_file).resolve()
    for record_path in sorted(path.parent.glob(f"*{RECORD_SUFFIX}")):
        record = read_record(record_path)
        if record is None or path.name not in record.get("outputs", []):
            continue
        overrides = record.get("request", {}).get("overrides", {})
        network = {k: v for k, v in overrides.items() if k.startswith("network_def")}
        if network:
            flags = " ".join(f"--{k} {_flag_value(v)}" for k, v in sorted(network.items()))
            return f"it was trained with {flags}: pass the same overrides to this command"
        return (f"it was trained with the config files' own network_def (its record {record_path.name} lists no "
                "--network_def override): run this command without --network_def overrides, with the config files it "
                "was trained with")
    return "no fingerprint record of this bundle names it: describe its network with --network_def overrides"


def _flag_value(value: Any) -> str:
    """A value as it is written on the command line (lists quoted)."""
    return f'"{value}"'.replace(" ", "") if isinstance(value, (list, tuple, dict)) else str(value)


class NamedCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` whose errors name the file and what to do.

    An unreadable file stops with ``remedy``; a checkpoint of another architecture than the network stops with one
    paragraph naming the first layer that differs and the ``network_def`` overrides the model was trained with (from
    its fingerprint record), instead of PyTorch's list of every mismatched tensor.

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
        try:
            super().__call__(engine)
        except RuntimeError as error:
            text = str(error)
            if "size mismatch" not in text and "Missing key" not in text and "Unexpected key" not in text:
                raise
            first = next((line.strip() for line in text.splitlines() if "size mismatch" in line or "key" in line), text)
            raise ValueError(
                f"{self.load_path} holds a network of another architecture than this config builds ({first[:300]}); "
                f"{network_mismatch_remedy(self.load_path)}"
            ) from None
