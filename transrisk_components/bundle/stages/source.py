"""The source stage: train the source network and save its weights.

How the source network is trained -- network, transforms, dataset, loss, optimiser, handlers, trainer -- is the
bundle's ``configs/source.json`` (with the source network, loss and optimiser in ``train.json``'s ``source``
section), a MONAI ``SupervisedTrainer`` like the fine-tuning one. Whether the stage runs at all, resumes or is
reused is the run's decision (:mod:`transrisk_components.bundle.workflow.plan`), taken before any stage starts;
this component only trains and saves.
"""

from __future__ import annotations

import logging
from pathlib import Path

from monai.engines import Trainer
from torch import nn

from transrisk_components.utils.distributed import barrier, is_rank0
from transrisk_components.utils.io import atomic_torch_save

__all__ = ["SourceStage"]

logger = logging.getLogger(__name__)


class SourceStage:
    """Run ``trainer`` and save ``network``'s weights (a ``state_dict``) to ``ckpt_path``.

    Args:
        ckpt_path: where the source weights are saved (atomically, by rank 0).
        trainer: the source trainer (``source#trainer``), training ``network`` (possibly through a DDP wrapper).
        network: the source network itself (``source#network_def``; ``Cs`` output channels), whose ``state_dict``
            is saved.
    """

    def __init__(self, ckpt_path: str, trainer: Trainer, network: nn.Module) -> None:
        self.ckpt_path = Path(ckpt_path)
        self.trainer = trainer
        self.network = network

    def run(self) -> Path:
        """Train, save the weights and return ``ckpt_path``."""
        logger.info(
            "training the source network on %d cases (%d epochs) into %s",
            len(self.trainer.data_loader.dataset),
            self.trainer.state.max_epochs,
            self.ckpt_path,
        )
        self.trainer.run()
        if is_rank0():
            atomic_torch_save(self.network.state_dict(), self.ckpt_path)
            logger.info("source network saved to %s", self.ckpt_path)
        barrier()
        return self.ckpt_path
