"""The source stage of a transfer run: train the source network unless its checkpoint already exists.

The bundles call it from their ``pretrain`` run id (and first thing in ``training``). Everything it builds --
dataset, loader, trainer -- is built inside :meth:`SourceStage.run`, so a run whose source checkpoint exists
pays nothing for it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from ignite.handlers import ProgressBar
from monai.data import CacheDataset, DataLoader, partition_dataset
from monai.engines import SupervisedTrainer
from monai.handlers import StatsHandler, TensorBoardStatsHandler
from monai.losses import DiceCELoss
from torch import nn

from transrisk_components.utils.distributed import barrier, is_distributed, is_rank0, rank_and_world
from transrisk_components.utils.io import atomic_torch_save
from transrisk_components.bundle.caching import cache_num_within_budget
from transrisk_components.bundle.engine import batch_loss
from transrisk_components.bundle.handlers import ResumableCheckpoints
from transrisk_components.bundle.transforms import train_transforms

__all__ = ["SourceStage"]

logger = logging.getLogger(__name__)


class SourceStage:
    """Train the source network on the source cases and save its weights to ``ckpt_path`` (once).

    Args:
        ckpt_path: where the source weights (a state_dict) are saved; if the file exists the stage is skipped.
        network: the source network (``Cs`` output channels).
        datalist: source cases ``{"case_id", "image", "label"}`` (source modality).
        dataset: registry name.
        task: source task.
        patch_size: training patch size.
        batch_size: cases per batch (each yields ``num_samples`` patches).
        num_samples: patches per case.
        max_epochs: training epochs.
        learning_rate: Adam learning rate.
        work_dir: periodic checkpoints for resuming a killed run.
        log_dir: TensorBoard folder.
        device: training device.
        amp: mixed precision on CUDA.
        cache_gb: memory budget of the cached source cases, GB per process; the leading cases that fit are
            cached, the rest loaded every epoch (see :func:`~transrisk_components.bundle.caching.cache_num_within_budget`).
        num_workers: data-loading workers.
        progress: show a progress bar.
    """

    def __init__(
        self,
        ckpt_path: str,
        network: nn.Module,
        datalist: Sequence[dict],
        dataset: str,
        task: str,
        patch_size: Sequence[int],
        batch_size: int,
        num_samples: int,
        max_epochs: int,
        learning_rate: float,
        work_dir: str,
        log_dir: str,
        device: str | torch.device = "cpu",
        amp: bool = False,
        cache_gb: float = 8.0,
        num_workers: int = 0,
        progress: bool = True,
    ) -> None:
        self.ckpt_path = Path(ckpt_path)
        self.network = network
        self.datalist = list(datalist)
        self.dataset = dataset
        self.task = task
        self.patch_size = list(patch_size)
        self.batch_size = batch_size
        self.num_samples = num_samples
        self.max_epochs = max_epochs
        self.learning_rate = learning_rate
        self.work_dir = work_dir
        self.log_dir = log_dir
        self.device = torch.device(device)
        self.amp = amp and self.device.type == "cuda"
        self.cache_gb = cache_gb
        self.num_workers = num_workers
        self.progress = progress

    def run(self) -> Path:
        """Train and save the source network unless ``ckpt_path`` exists; return ``ckpt_path``."""
        if self.ckpt_path.is_file():
            logger.info("source checkpoint %s found: source stage skipped", self.ckpt_path)
            return self.ckpt_path
        logger.info(
            "no source checkpoint at %s: training the source network on %d %s cases (%d epochs)",
            self.ckpt_path,
            len(self.datalist),
            self.task,
            self.max_epochs,
        )
        trainer = self._trainer()
        trainer.run()
        if is_rank0():
            atomic_torch_save(self.network.state_dict(), self.ckpt_path)
            logger.info("source network saved to %s", self.ckpt_path)
        barrier()
        return self.ckpt_path

    def _trainer(self) -> SupervisedTrainer:
        rank, world = rank_and_world()
        cases = partition_dataset(self.datalist, num_partitions=world, shuffle=False, even_divisible=True)[rank]
        transform = train_transforms(self.dataset, self.task, self.patch_size, num_samples=self.num_samples)
        data = CacheDataset(
            cases,
            transform=transform,
            cache_num=cache_num_within_budget(cases, transform, self.cache_gb),
            num_workers=self.num_workers,
            progress=False,
        )
        loader = DataLoader(data, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers)
        network = self.network.to(self.device)
        model = nn.parallel.DistributedDataParallel(network) if is_distributed() else network
        optimizer = torch.optim.Adam(model.parameters(), lr=self.learning_rate)
        trainer = SupervisedTrainer(
            device=self.device,
            max_epochs=self.max_epochs,
            train_data_loader=loader,
            network=model,
            optimizer=optimizer,
            loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
            amp=self.amp,
            decollate=False,
        )
        ResumableCheckpoints(self.work_dir, {"model": network, "optimizer": optimizer}, prefix="source").attach(trainer)
        if rank == 0:
            StatsHandler(tag_name="source_loss", output_transform=batch_loss).attach(trainer)
            TensorBoardStatsHandler(
                log_dir=self.log_dir, tag_name="source_loss", output_transform=batch_loss
            ).attach(trainer)
            if self.progress:
                ProgressBar(desc="source", persist=False).attach(trainer)
        return trainer
