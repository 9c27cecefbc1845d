"""The risk-map stage: one transfer risk map per target training case, computed once and cached.

Pass 1 runs the source model over the target training cases (sliding window, whole volumes) and accumulates
the LEEP joint ``P(y, z)`` (summed over ranks under DDP). Pass 2 turns the kept source probabilities into
per-voxel transferability ``T`` and risk, and writes ``<case_id>_risk.nii.gz`` on the image grid with the
image's affine. The source model runs once per case: the probabilities of pass 1 are kept in memory (a few-shot
target set is small).

Cache: ``<cache_root>/<key>/`` where ``key`` hashes the source checkpoint's bytes, the datalist and the options.
Maps and ``manifest.json`` are written atomically, the manifest last; a folder with a manifest is reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.distributed as dist
from monai.inferers import Inferer
from torch import nn

from transrisk_components.data.registry import get_dataset, num_classes
from transrisk_components.utils.distributed import barrier, is_distributed, rank_and_world
from transrisk_components.utils.io import atomic_write, atomic_write_text, file_sha256
from transrisk_components.method.risk import transfer_risk
from transrisk_components.method.transferability import LEEPStatistics, pixel_transferability

__all__ = ["RiskDatalist", "RiskStage"]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def _image_affine(image: torch.Tensor) -> np.ndarray:
    """The 4x4 affine of a loaded MetaTensor as read from its file."""
    meta = getattr(image, "meta", {})
    affine = meta.get("original_affine", meta.get("affine"))
    if affine is None:
        raise ValueError(f"image {meta.get('filename_or_obj', '?')} carries no affine")
    return np.asarray(affine, dtype=np.float64)


class RiskStage:
    """Risk maps of the target training cases under one source model.

    Args:
        enabled: when false, :meth:`datalist` returns the cases unchanged and nothing is computed.
        dataset: registry name (``"fets"``, ``"iseg"``).
        datalist: target training cases ``{"case_id", "image", "label"}`` (target modality).
        source_task: task of the source model (sets ``Cs``).
        target_task: task of the target labels (sets ``Ct``).
        source_ckpt: source network weights (a state_dict).
        network: the source network architecture (weights are loaded from ``source_ckpt``).
        transform: the whole-volume preprocessing of a case (the config's ``validate#preprocessing``):
            ``{"image", "label", ...}`` paths -> ``image [C, *S]`` and ``label [1, *S]`` target-task classes on
            the image grid, the image carrying its file's affine. It must not crop or resample: the maps are
            written on the image file's grid.
        inferer: whole-volume inferer, e.g. ``SlidingWindowInferer``.
        cache_root: folder holding one sub-folder per cache key.
        normalization: risk normalisation, see :func:`transrisk_components.method.risk.transfer_risk`.
        shuffle: ablation: permute each map's voxels at random (seeded by ``seed``), keeping its values but
            not where they are -- the "random map" control of the experiments.
        seed: seed of the permutation when ``shuffle`` is set.
        device: device of the source model.
        amp: autocast on CUDA.
    """

    def __init__(
        self,
        enabled: bool,
        dataset: str,
        datalist: list[dict],
        source_task: str,
        target_task: str,
        source_ckpt: str,
        network: nn.Module,
        transform: Callable[[dict], dict],
        inferer: Inferer,
        cache_root: str,
        normalization: str = "complement",
        shuffle: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
        amp: bool = False,
    ) -> None:
        self.enabled = enabled
        self.dataset = dataset
        self.cases = list(datalist)
        self.source_task = source_task
        self.target_task = target_task
        self.source_ckpt = Path(source_ckpt)
        self.network = network
        self.transform = transform
        self.inferer = inferer
        self.cache_root = Path(cache_root)
        self.normalization = normalization
        self.shuffle = shuffle
        self.seed = seed
        self.device = torch.device(device)
        self.amp = amp and self.device.type == "cuda"
        spec = get_dataset(dataset)
        self.num_source_classes = num_classes(spec, source_task)
        self.num_target_classes = num_classes(spec, target_task)
        self._manifest: dict[str, Any] | None = None

    def cache_key(self) -> str:
        """SHA-256 (first 16 hex digits) of the source checkpoint bytes, the datalist and the options."""
        if not self.source_ckpt.is_file():
            raise FileNotFoundError(f"source checkpoint not found: {self.source_ckpt} (run the 'pretrain' stage first)")
        record = {
            "source_ckpt_sha256": file_sha256(self.source_ckpt),
            "datalist": [{k: c[k] for k in ("case_id", "image", "label")} for c in self.cases],
            "options": self.options(),
        }
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]

    def options(self) -> dict[str, Any]:
        """The options that change the maps."""
        return {
            "dataset": self.dataset,
            "source_task": self.source_task,
            "target_task": self.target_task,
            "normalization": self.normalization,
            "shuffle_seed": self.seed if self.shuffle else None,
            "inferer": {name: repr(getattr(self.inferer, name, None)) for name in ("roi_size", "overlap", "mode")},
        }

    def run(self) -> dict[str, Any]:
        """Compute the maps unless a cache for the same key exists; return the manifest.

        Manifest: ``{"key", "options", "leep", "num_voxels", "cases": {case_id: {"risk": path, "leep": float}}}``.
        """
        if self._manifest is not None:
            return self._manifest
        folder = self.cache_root / self.cache_key()
        barrier()  # every rank decides on the same cache state
        manifest_path = folder / MANIFEST
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text())
            if all(Path(c["risk"]).is_file() for c in manifest["cases"].values()):
                logger.info("risk maps reused from %s (cache key unchanged)", folder)
                self._manifest = manifest
                return manifest
        logger.info("computing risk maps of %d target cases in %s", len(self.cases), folder)
        self._manifest = self._compute(folder)
        return self._manifest

    def datalist(self) -> Sequence[dict]:
        """The target training cases, each with a ``"risk"`` map path when the stage is enabled.

        With the stage enabled this is a :class:`RiskDatalist`: its length is known at once, the maps are
        computed (or found in the cache) on first access to an entry, so a config can build its dataset and
        trainer before the source model exists.
        """
        if not self.enabled:
            return [dict(c) for c in self.cases]
        return RiskDatalist(self)

    def _load_network(self) -> nn.Module:
        state = torch.load(self.source_ckpt, map_location="cpu", weights_only=True)
        try:
            self.network.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"source checkpoint {self.source_ckpt} does not fit the source network: {err}") from err
        return self.network.to(self.device).eval()

    @torch.no_grad()
    def _compute(self, folder: Path) -> dict[str, Any]:
        rank, world = rank_and_world()
        network = self._load_network()
        load = self.transform
        stats = LEEPStatistics(self.num_target_classes, self.num_source_classes)
        kept: list[tuple[dict, torch.Tensor, torch.Tensor, np.ndarray]] = []
        for case in self.cases[rank::world]:  # pass 1: source probabilities and LEEP counts
            item = load(case)
            image = item["image"].as_tensor().unsqueeze(0).to(self.device)  # [1, C, *S]
            label = item["label"].as_tensor().unsqueeze(0).to(self.device)  # [1, 1, *S]
            with torch.autocast(self.device.type, enabled=self.amp):
                logits = self.inferer(image, network)  # [1, Cs, *S]
            probs = torch.softmax(logits.float(), dim=1)
            stats.update(probs, label)
            kept.append((case, probs, label, _image_affine(item["image"])))
        stats.all_reduce()
        conditional = stats.conditional()
        cases: dict[str, dict[str, Any]] = {}
        log_t_sum = 0.0
        for case, probs, label, affine in kept:  # pass 2: transferability -> risk -> NIfTI
            transferability = pixel_transferability(probs, label, conditional)  # [1, 1, *S]
            log_t = torch.log(transferability.double().clamp_min(1e-12))
            log_t_sum += float(log_t.sum())
            risk = transfer_risk(transferability, self.normalization)[0, 0].cpu()  # [*S]
            if self.shuffle:
                generator = torch.Generator().manual_seed(self.seed)
                risk = risk.flatten()[torch.randperm(risk.numel(), generator=generator)].view_as(risk)
            risk = risk.numpy().astype(np.float32)
            path = folder / f"{case['case_id']}_risk.nii.gz"
            atomic_write(path, lambda tmp, r=risk, a=affine: nib.save(nib.Nifti1Image(r, a), tmp), suffix=".nii.gz")
            cases[case["case_id"]] = {"risk": str(path), "leep": float(log_t.mean())}
        cases, log_t_sum = self._gather(cases, log_t_sum)
        manifest = {
            "key": folder.name,
            "source_ckpt": str(self.source_ckpt),
            "options": self.options(),
            "leep": log_t_sum / max(stats.num_voxels, 1),
            "num_voxels": stats.num_voxels,
            "conditional": conditional.tolist(),
            "cases": cases,
        }
        if rank == 0:
            atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2))
            logger.info("risk maps written to %s (LEEP %.4f over %d voxels)", folder, manifest["leep"], stats.num_voxels)
        barrier()
        return manifest

    @staticmethod
    def _gather(cases: dict[str, dict[str, Any]], log_t_sum: float) -> tuple[dict[str, dict[str, Any]], float]:
        """Merge every rank's per-case records and log-T sums (identity without DDP)."""
        if not is_distributed():
            return cases, log_t_sum
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (cases, log_t_sum))
        merged: dict[str, dict[str, Any]] = {}
        for part, _ in gathered:
            merged.update(part)
        return merged, math.fsum(s for _, s in gathered)


class RiskDatalist(Sequence):
    """The risk stage's datalist, resolved lazily: ``len`` is the number of cases, an entry runs the stage.

    Entries are ``{**case, "risk": path}``. The first access to an entry calls :meth:`RiskStage.run` (computing
    the maps, or reading the cache); run ids call ``risk_stage.run()`` before the trainer so that this happens
    in the main process and not inside data-loader workers.
    """

    def __init__(self, stage: RiskStage) -> None:
        self.stage = stage

    def __len__(self) -> int:
        return len(self.stage.cases)

    def __getitem__(self, index: int | slice) -> dict | list[dict]:
        maps = self.stage.run()["cases"]
        if isinstance(index, slice):
            return [{**c, "risk": maps[c["case_id"]]["risk"]} for c in self.stage.cases[index]]
        case = self.stage.cases[index]
        return {**case, "risk": maps[case["case_id"]]["risk"]}
