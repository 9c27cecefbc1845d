"""The source stage of a transfer run: train the source network unless its checkpoint already exists.

Everything about *how* the source network is trained -- network, transforms, dataset, loss, optimiser,
handlers, trainer -- is the config's ``source`` section, a MONAI ``SupervisedTrainer`` like the fine-tuning one.
This module only decides whether to run that trainer, and saves the weights it produced. Any MONAI
segmentation bundle's weights can therefore be the source: point ``source_ckpt`` at its ``model.pt`` and
``source#network_def`` at its network, declare them as weights from outside (``fingerprint#source`` ``None``), and
the stage is skipped. A checkpoint the bundle did not make (no fingerprint record of ours names it) is read-only:
undeclared, it stops the stage with :class:`~transrisk_components.bundle.fingerprint.ForeignOutputError` rather than
being trained over or deleted.

The config builds the trainer when it is parsed; with ``CacheDataset(runtime_cache=True)`` nothing is loaded
until the trainer runs, so a skipped stage costs next to nothing. The checkpoint is reused only when its
recorded fingerprint (settings, input files, package version) equals the current one; see
:mod:`transrisk_components.bundle.fingerprint`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from monai.engines import Trainer
from torch import nn

from transrisk_components.utils.distributed import barrier, is_rank0
from transrisk_components.utils.io import atomic_torch_save, load_checkpoint
from transrisk_components.bundle.fingerprint import ForeignOutputError, StageFingerprint

__all__ = ["SourceStage"]

logger = logging.getLogger(__name__)


class SourceStage:
    """Run ``trainer`` once and save ``network``'s weights (a ``state_dict``) to ``ckpt_path``.

    Args:
        ckpt_path: where the source weights are saved; the stage is skipped when the file exists and
            ``fingerprint`` matches the one recorded with it.
        trainer: the source trainer (``source#trainer``), training ``network`` (possibly through a DDP wrapper).
        network: the source network itself (``source#network_def``; ``Cs`` output channels), whose
            ``state_dict`` is saved.
        fingerprint: what determines the source model; its ``outputs`` are ``ckpt_path`` and the trainer's
            periodic checkpoints. ``None`` for weights from outside (another bundle's ``model.pt``): they must
            exist and are used as they are (later stages still record their SHA-256).
        output: what the source network's outputs are (``source_output``): the stage trains ``"softmax"`` networks
            only; ``"sigmoid"`` describes weights from outside.
    """

    def __init__(
        self,
        ckpt_path: str,
        trainer: Trainer,
        network: nn.Module,
        fingerprint: StageFingerprint | None,
        output: str = "softmax",
    ) -> None:
        self.ckpt_path = Path(ckpt_path)
        self.trainer = trainer
        self.network = network
        self.fingerprint = fingerprint
        self.output = output

    def run(self) -> Path:
        """Train and save the source network unless a matching ``ckpt_path`` exists; return ``ckpt_path``.

        Raises:
            ForeignOutputError: ``ckpt_path`` exists and the bundle did not make it, but it was not declared as
                weights from outside (it is never deleted or changed).
            StaleOutputError: ``ckpt_path`` or the periodic checkpoints were made with another fingerprint.
            ValueError: the matching ``ckpt_path`` is unreadable (names the file and the remedy), or the stage would
                train a source whose ``output`` is not ``"softmax"``.
        """
        if self.fingerprint is not None and self.output != "softmax":
            raise ValueError(
                f"source_output {self.output!r} describes a source from elsewhere, but the source stage would train one "
                f"here (at {self.ckpt_path}), and it trains softmax networks: declare the checkpoint as weights from "
                "outside (--fingerprint#source '$None'), or pass --source_output softmax"
            )
        if self.fingerprint is None:
            if not self.ckpt_path.is_file():
                raise FileNotFoundError(f"source checkpoint {self.ckpt_path} (given from outside: no fingerprint) does not exist")
            logger.info("source checkpoint %s given from outside: source stage skipped", self.ckpt_path)
            return self.ckpt_path
        if self.ckpt_path.is_file() and not self.fingerprint.owns(self.ckpt_path):
            raise ForeignOutputError(
                f"source checkpoint {self.ckpt_path} was not made by this bundle (no fingerprint record of ours names "
                "it), so it is never deleted or changed, whatever --overwrite says. To fine-tune from it as it is, "
                "declare it as weights from outside: --fingerprint#source '$None' (MONAI drops a plain None given on "
                "the command line; in Python pass None), with source#network_def and num_source_classes describing "
                "its network. To train a source model here instead, point --source_ckpt at a path of its own."
            )
        self.fingerprint.prepare()
        if self.ckpt_path.is_file():
            load_checkpoint(
                self.ckpt_path,
                "delete it and rerun: the source stage rebuilds it from its finished run's checkpoint or retrains",
                map_location="cpu",
                weights_only=True,
            )
            logger.info("source checkpoint %s matches its fingerprint: source stage skipped", self.ckpt_path)
            return self.ckpt_path
        logger.info(
            "no source checkpoint at %s: training the source network on %d cases (%d epochs)",
            self.ckpt_path,
            len(self.trainer.data_loader.dataset),
            self.trainer.state.max_epochs,
        )
        self.trainer.run()
        if is_rank0():
            atomic_torch_save(self.network.state_dict(), self.ckpt_path)
            logger.info("source network saved to %s", self.ckpt_path)
        barrier()
        return self.ckpt_path
