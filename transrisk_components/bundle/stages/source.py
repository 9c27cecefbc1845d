"""The source stage of a transfer run: train the source network unless its checkpoint already exists.

Everything about *how* the source network is trained -- network, transforms, dataset, loss, optimiser,
handlers, trainer -- is the config's ``source`` section, a MONAI ``SupervisedTrainer`` like the fine-tuning one.
This module only decides whether to run that trainer, and saves the weights it produced. Any MONAI
segmentation bundle's weights can therefore be the source: point ``source_ckpt`` at its ``model.pt`` and
``source#network_def`` at its network, and the stage is skipped.

The config builds the trainer when it is parsed; with ``CacheDataset(runtime_cache=True)`` nothing is loaded
until the trainer runs, so a skipped stage costs next to nothing.
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
    """Run ``trainer`` once and save ``network``'s weights (a ``state_dict``) to ``ckpt_path``.

    Args:
        ckpt_path: where the source weights are saved; when the file exists the stage is skipped.
        trainer: the source trainer (``source#trainer``), training ``network`` (possibly through a DDP wrapper).
        network: the source network itself (``source#network_def``; ``Cs`` output channels), whose
            ``state_dict`` is saved.
    """

    def __init__(self, ckpt_path: str, trainer: Trainer, network: nn.Module) -> None:
        self.ckpt_path = Path(ckpt_path)
        self.trainer = trainer
        self.network = network

    def run(self) -> Path:
        """Train and save the source network unless ``ckpt_path`` exists; return ``ckpt_path``."""
        if self.ckpt_path.is_file():
            logger.info("source checkpoint %s found: source stage skipped", self.ckpt_path)
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
