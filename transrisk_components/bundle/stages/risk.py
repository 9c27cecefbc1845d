"""The risk-map stage: one transfer risk map per target training case, computed once and cached.

Pass 1 runs the source model over the target training cases (sliding window, whole volumes) and accumulates
the LEEP joint ``P(y, z)`` inside each case's mask (summed over ranks under DDP). Pass 2 runs the source model
again, turns its probabilities into per-voxel transferability ``T`` and risk, and writes
``<case_id>_risk.nii.gz`` on the image grid with the image's affine (0 outside the mask).

The mask (``mask="nonzero"``, default) is the head: the voxels where the image is nonzero, the ones
``NormalizeIntensityd(nonzero=True)`` normalises. Without it the air around the head, trivially background,
dominates ``P(y | z)`` and the reported LEEP.

Memory: nothing of a case outlives its iteration (labels are kept as uint8 while a case is processed), so the
peak memory does not grow with the number of target cases: on 128^3 phantom cases (4 source classes, a
1x1x1-conv source model so that only the stage's own memory shows) peak RSS went from 779 MB for 2 cases to
834 MB for 8 (x1.07), where keeping every case's float32 probabilities and int64 labels between the passes
went from 861 MB to 1,245 MB (x1.45). The price is a second source inference per case.
Measured on 64^3 phantom cases (SegResNet width 8, 48^3 windows, one thread, a shared and busy 2-core
machine, so the figures are rough): keeping every case's probabilities as float16 on the CPU between the passes
took 1.3-1.7 s per case, recomputing them 1.5-3.0 s per case -- keeping is faster, but it holds
``Cs * 2 + 1`` bytes per voxel per case (~80 MB for one 240x240x155 FeTS case, ~100 GB for FeTS2022's 1,251),
so recomputing is the default and only choice. The stage runs once per (source model, target set).

Cache: ``<cache_root>/<key>/`` where ``key`` is the stage's fingerprint key
(:class:`~transrisk_components.bundle.fingerprint.StageFingerprint`: the settings listed under
``fingerprint#risk`` in the bundle config -- inferer, risk options, amp --, the size and mtime of every image
and label file, the source checkpoint's SHA-256 and the package version). Maps and ``manifest.json`` are
written atomically, the manifest last; a folder with a complete manifest is reused. The manifest names the maps
relative to its folder, so a moved cache still reads.
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
from transrisk_components.utils.io import atomic_write, atomic_write_text, load_checkpoint, remove_partial_writes
from transrisk_components.method.risk import transfer_risk
from transrisk_components.method.transferability import LEEPStatistics, pixel_transferability
from transrisk_components.bundle.fingerprint import StageFingerprint

__all__ = ["RiskDatalist", "RiskStage"]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"

#: Voxel masks of the LEEP statistics and maps (see :class:`RiskStage`).
RISK_MASKS = ("nonzero", "all")


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
        fingerprint: what determines the maps (its ``key()`` names the cache folder).
        normalization: risk normalisation, see :func:`transrisk_components.method.risk.transfer_risk`
            (``"minmax"`` spans the masked voxels only).
        mask: voxels the LEEP statistics, the reported LEEP and the maps cover: ``"nonzero"`` (default) the
            voxels where any image channel is nonzero -- the brain, the voxels ``NormalizeIntensityd(nonzero=True)``
            normalises -- or ``"all"`` (air included). Maps are 0 outside the mask.
        shuffle: ablation: permute each map's values inside its mask at random, keeping the values but not where
            they are -- the "random map" control of the experiments. Each case has its own permutation, seeded
            by a hash of ``seed`` and its case id.
        seed: seed of the permutations when ``shuffle`` is set.
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
        fingerprint: StageFingerprint,
        normalization: str = "complement",
        mask: str = "nonzero",
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
        self.fingerprint = fingerprint
        if mask not in RISK_MASKS:
            raise ValueError(f"unknown risk mask {mask!r}; choose one of {RISK_MASKS}")
        self.normalization = normalization
        self.mask = mask
        self.shuffle = shuffle
        self.seed = seed
        self.device = torch.device(device)
        self.amp = amp and self.device.type == "cuda"
        spec = get_dataset(dataset)
        self.num_source_classes = num_classes(spec, source_task)
        self.num_target_classes = num_classes(spec, target_task)
        self._manifest: dict[str, Any] | None = None

    def cache_key(self) -> str:
        """The fingerprint key of the maps (16 hex digits), the name of their cache folder."""
        if not self.source_ckpt.is_file():
            raise FileNotFoundError(f"source checkpoint not found: {self.source_ckpt} (run the 'pretrain' stage first)")
        return self.fingerprint.key()

    def map_path(self, case_id: str) -> str:
        """The path of a case's cached risk map (runs the stage first if needed)."""
        return str(self.cache_root / self.run()["key"] / self.run()["cases"][case_id]["risk"])

    def run(self) -> dict[str, Any]:
        """Compute the maps unless a cache for the same key exists; return the manifest.

        Manifest: ``{"key", "fingerprint", "leep", "num_voxels", "cases": {case_id: {"risk": file name, "leep": float}}}``
        (map files relative to the manifest's folder).
        """
        if self._manifest is not None:
            return self._manifest
        folder = self.cache_root / self.cache_key()
        barrier()  # every rank decides on the same cache state
        manifest_path = folder / MANIFEST
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text())
            if all((folder / c["risk"]).is_file() for c in manifest["cases"].values()):
                logger.info("risk maps reused from %s (fingerprint unchanged)", folder)
                self._manifest = manifest
                return manifest
        if rank_and_world()[0] == 0:
            remove_partial_writes(folder)  # left by a killed run; this run holds the bundle's lock
        barrier()
        logger.info("computing risk maps of %d target cases in %s", len(self.cases), folder)
        self._manifest = self._compute(folder)
        return self._manifest

    def datalist(self) -> Sequence[dict]:
        """The target training cases; when the stage is enabled each also holds its ``"risk"`` map path and its
        ``"foreground_voxels"`` (label > 0 under the target task, whole case: the foreground-normalised loss's
        normaliser, copied into every patch by the crop transforms).

        With the stage enabled this is a :class:`RiskDatalist`: its length is known at once, the maps are
        computed (or found in the cache) on first access to an entry, so a config can build its dataset and
        trainer before the source model exists.
        """
        if not self.enabled:
            return [dict(c) for c in self.cases]
        return RiskDatalist(self)

    def _load_network(self) -> nn.Module:
        state = load_checkpoint(
            self.source_ckpt, "delete it and rerun the 'pretrain' stage", map_location="cpu", weights_only=True
        )
        try:
            self.network.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"source checkpoint {self.source_ckpt} does not fit the source network: {err}") from err
        return self.network.to(self.device).eval()

    def _source_pass(self, network: nn.Module, case: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
        """Load one case and run the source model over it.

        Returns:
            ``probs [1, Cs, *S]`` float32 source softmax, ``label [1, 1, *S]`` uint8 target classes,
            ``mask [1, 1, *S]`` bool statistics mask, all on ``self.device``, and the image's 4x4 affine.
        """
        item = self.transform(case)
        image = item["image"].as_tensor().unsqueeze(0).to(self.device)  # [1, C, *S]
        label = item["label"].as_tensor().unsqueeze(0).to(self.device, torch.uint8)  # [1, 1, *S]
        if self.mask == "nonzero":  # the air NormalizeIntensityd(nonzero=True) left at 0 (and, rarely, a voxel at the mean)
            mask = (image != 0).any(dim=1, keepdim=True)
            if not mask.any():
                raise ValueError(f"{case['case_id']}: image {case['image']} has no nonzero voxel to compute LEEP over")
        else:
            mask = torch.ones_like(label, dtype=torch.bool)
        with torch.autocast(self.device.type, enabled=self.amp):
            logits = self.inferer(image, network)  # [1, Cs, *S]
        return torch.softmax(logits.float(), dim=1), label, mask, _image_affine(item["image"])

    def _risk_map(self, transferability: torch.Tensor, mask: torch.Tensor, case_id: str) -> np.ndarray:
        """``[*S]`` float32 risk inside ``mask``, 0 outside; for ``shuffle`` its masked values permuted per case."""
        inside = transfer_risk(transferability[mask].view(1, 1, -1), self.normalization).flatten().cpu()  # [n]
        if self.shuffle:
            digest = hashlib.sha256(f"{self.seed}:{case_id}".encode()).hexdigest()
            generator = torch.Generator().manual_seed(int(digest[:15], 16))
            inside = inside[torch.randperm(inside.numel(), generator=generator)]
        risk = torch.zeros(transferability.shape[2:], dtype=torch.float32)
        risk[mask[0, 0].cpu()] = inside.float()
        return risk.numpy()

    @torch.no_grad()
    def _compute(self, folder: Path) -> dict[str, Any]:
        rank, world = rank_and_world()
        network = self._load_network()
        mine = self.cases[rank::world]
        stats = LEEPStatistics(self.num_target_classes, self.num_source_classes)
        for case in mine:  # pass 1: LEEP counts inside the mask
            probs, label, mask, _ = self._source_pass(network, case)
            stats.update(probs, label, mask)
            del probs, label, mask
        stats.all_reduce()
        conditional = stats.conditional()
        cases: dict[str, dict[str, Any]] = {}
        log_t_sum = 0.0
        for case in mine:  # pass 2: source pass again -> transferability -> risk -> NIfTI
            probs, label, mask, affine = self._source_pass(network, case)
            transferability = pixel_transferability(probs, label, conditional)  # [1, 1, *S]
            del probs
            log_t = torch.log(transferability[mask].double().clamp_min(1e-12))  # [n]
            log_t_sum += float(log_t.sum())
            risk = self._risk_map(transferability, mask, case["case_id"])
            foreground = int(torch.count_nonzero(label))
            if foreground == 0:
                logger.warning(
                    "%s has no foreground under target task %r: a foreground-normalised loss uses its voxel count",
                    case["case_id"],
                    self.target_task,
                )
            path = folder / f"{case['case_id']}_risk.nii.gz"
            atomic_write(path, lambda tmp, r=risk, a=affine: nib.save(nib.Nifti1Image(r, a), tmp), suffix=".nii.gz")
            cases[case["case_id"]] = {"risk": path.name, "leep": float(log_t.mean()), "foreground_voxels": foreground}
        cases, log_t_sum = self._gather(cases, log_t_sum)
        manifest = {
            "key": folder.name,
            "source_ckpt": str(self.source_ckpt),
            "fingerprint": self.fingerprint.current(),
            "leep": log_t_sum / max(stats.num_voxels, 1),
            "num_voxels": stats.num_voxels,
            "conditional": conditional.tolist(),
            "cases": cases,
        }
        if rank == 0:
            atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2))
            logger.info(
                "risk maps written to %s (LEEP %.4f over %d voxels, mask %r)",
                folder,
                manifest["leep"],
                stats.num_voxels,
                self.mask,
            )
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

    Entries are ``{**case, "risk": path, "foreground_voxels": count}``. The first access to an entry calls
    :meth:`RiskStage.run` (computing the maps, or reading the cache); run ids call ``risk_stage.run()`` before
    the trainer so that this happens in the main process and not inside data-loader workers.
    """

    def __init__(self, stage: RiskStage) -> None:
        self.stage = stage

    def __len__(self) -> int:
        return len(self.stage.cases)

    def __getitem__(self, index: int | slice) -> dict | list[dict]:
        if isinstance(index, slice):
            return [_with_map(c, self.stage) for c in self.stage.cases[index]]
        return _with_map(self.stage.cases[index], self.stage)


def _with_map(case: dict, stage: RiskStage) -> dict:
    """``case`` with its ``"risk"`` path and ``"foreground_voxels"`` from the stage's manifest."""
    entry = stage.run()["cases"][case["case_id"]]
    return {**case, "risk": stage.map_path(case["case_id"]), "foreground_voxels": entry["foreground_voxels"]}
