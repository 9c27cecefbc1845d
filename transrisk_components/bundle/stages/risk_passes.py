"""The risk stage's passes over the target training cases: source model -> LEEP statistics -> risk maps.

Pass 1 (:meth:`SourcePasses.first_pass`) runs the source model over each case once (sliding window, whole volume),
updates the LEEP statistics inside the case's mask and keeps the case's source probabilities on disk
(:class:`~transrisk_components.bundle.stages.risk_cache.KeptPass`). The later passes read them back:

- :meth:`SourcePasses.pooled_maps` (``map_type`` ``"pooled"``, and the ``"foreground"`` control): one pooled
  ``P(y | z)``; pass 2 turns each voxel's source prediction into its transferability ``T`` and risk;
- :meth:`SourcePasses.location_maps` (``"location"``): ``P_l(y | z)`` per patch location ``l`` of the common grid
  (:func:`common_grid`); pass 2 accumulates ``LEEP_l``, pass 3 writes each case's map from ``exp(LEEP_l)``.

Nothing of a case outlives its iteration in memory (labels are kept as uint8 while a case is processed), so the peak
memory does not grow with the number of target cases. Under DDP each rank passes over its own cases, the statistics
are summed over ranks, and :meth:`PassResult.gathered` merges the per-case records.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.distributed as dist
from monai.inferers import Inferer
from torch import nn

from transrisk_components.bundle.stages.risk_cache import KeptPass, RiskCache
from transrisk_components.bundle.stages.risk_options import RiskMapOptions
from transrisk_components.method.masks import image_mask
from transrisk_components.method.risk import transfer_risk
from transrisk_components.method.source_outputs import source_states
from transrisk_components.method.transferability import LEEPStatistics, LocationLEEPStatistics, pixel_transferability
from transrisk_components.utils.distributed import is_distributed

__all__ = ["PassResult", "SourcePasses", "common_grid"]

logger = logging.getLogger(__name__)


def _image_affine(image: torch.Tensor) -> np.ndarray:
    """The 4x4 affine of a loaded MetaTensor as read from its file."""
    meta = getattr(image, "meta", {})
    affine = meta.get("original_affine", meta.get("affine"))
    if affine is None:
        raise ValueError(f"image {meta.get('filename_or_obj', '?')} carries no affine")
    return np.asarray(affine, dtype=np.float64)


def common_grid(cases: Sequence[dict]) -> tuple[int, ...]:
    """The image grid (3 sizes) shared by every case, read from the file headers before any inference.

    Raises:
        ValueError: no case, or a case whose image shape or affine differs from the first case's; the message names
            both cases and files.
    """
    reference: tuple[str, str, tuple[int, ...], np.ndarray] | None = None
    for case in cases:
        for path in case["image"] if isinstance(case["image"], (list, tuple)) else [case["image"]]:
            header = nib.load(path)
            shape, affine = tuple(int(n) for n in header.shape[:3]), np.asarray(header.affine, dtype=np.float64)
            if reference is None:
                reference = (case["case_id"], str(path), shape, affine)
            elif shape != reference[2] or not np.allclose(affine, reference[3], atol=1e-4):
                raise ValueError(
                    f"risk map 'location' needs every case on one grid, but {case['case_id']} ({path}) has shape "
                    f"{shape} and affine {affine.round(3).tolist()} where {reference[0]} ({reference[1]}) has "
                    f"{reference[2]} and {reference[3].round(3).tolist()}: the cases are not co-registered; "
                    "use risk map 'pooled'"
                )
    if reference is None:
        raise ValueError("risk map 'location' needs at least one target training case")
    return reference[2]


@dataclass
class PassResult:
    """What the passes over one rank's cases found.

    Attributes:
        cases: per case id ``{"foreground_voxels": int, "risk": map file name, "leep": float}``, the manifest's
            per-case records.
        log_t_sum: the sum of ``log T`` (the map's own statistics) over the masked voxels of these cases.
        pooled: the pooled LEEP statistics ``P(y, z)`` over every rank's cases (``[Ct, Cs]``), whatever the map.
        extra: the manifest's entries of the map type (``"location_patch"``, ``"num_locations"``; none for pooled).
    """

    cases: dict[str, dict[str, Any]]
    log_t_sum: float
    pooled: LEEPStatistics
    extra: dict[str, Any] = field(default_factory=dict)

    def gathered(self) -> PassResult:
        """Every rank's per-case records and log-T sums merged (itself without DDP); a collective under DDP."""
        if not is_distributed():
            return self
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (self.cases, self.log_t_sum))
        merged: dict[str, dict[str, Any]] = {}
        for part, _ in parts:
            merged.update(part)
        return PassResult(merged, math.fsum(s for _, s in parts), self.pooled, self.extra)


class SourcePasses:
    """The passes of the risk stage over target training cases (see the module docstring).

    Args:
        transform: the whole-volume preprocessing of a case: ``{"image", "label", ...}`` paths -> ``image [C, *S]``
            and ``label [1, *S]`` target-task classes on the image grid, the image carrying its file's affine.
        inferer: whole-volume inferer, e.g. ``SlidingWindowInferer``.
        options: the map and statistics options.
        num_target_classes: ``Ct``, the classes of the target task.
        num_source_classes: ``Cs``, the source states ``z`` (``2^k`` for a sigmoid source of ``k`` channels).
        target_task: the target task's name (for the warning about a case without foreground).
        device: device of the source model and of the statistics.
        amp: autocast during the source inference.
        source_images: per case id, the images the source network reads (one per its input channel); ``None``
            feeds it the case's own images.
    """

    def __init__(
        self,
        transform: Callable[[dict], dict],
        inferer: Inferer,
        options: RiskMapOptions,
        num_target_classes: int,
        num_source_classes: int,
        target_task: str,
        device: torch.device,
        amp: bool,
        source_images: Mapping[str, Any] | None = None,
    ) -> None:
        self.transform = transform
        self.inferer = inferer
        self.options = options
        self.num_target_classes = num_target_classes
        self.num_source_classes = num_source_classes
        self.target_task = target_task
        self.device = device
        self.amp = amp
        self.source_images = source_images

    def source_pass(self, network: nn.Module, case: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
        """Load one case through the whole-volume transform and run the source model over it.

        Returns:
            ``probs [1, Cs, *S]`` float32 source state probabilities ``p(z | v)`` (``Cs`` states, see
            ``source_output``), ``label [1, 1, *S]`` uint8 target classes, ``mask [1, 1, *S]`` bool statistics mask,
            all on ``self.device``, and the image's 4x4 affine.

        Raises:
            ValueError: the source's input images are not on the grid of the case's own image (names the case).
        """
        item = self.transform(case)
        image = item["image"].as_tensor().unsqueeze(0).to(self.device)  # [1, C, *S]
        label = item["label"].as_tensor().unsqueeze(0).to(self.device, torch.uint8)  # [1, 1, *S]
        # "nonzero": the air NormalizeIntensityd(nonzero=True) left at 0 (and, rarely, a voxel at the mean)
        mask = image_mask(image, self.options.mask, case["case_id"], case["image"])
        if self.source_images is not None:
            images = self.source_images[case["case_id"]]
            image = self.transform({**case, "image": images})["image"].as_tensor().unsqueeze(0).to(self.device)
            if image.shape[2:] != label.shape[2:]:
                raise ValueError(
                    f"{case['case_id']}: the source's input images {images} have the grid {tuple(image.shape[2:])}, "
                    f"the case's image {case['image']} {tuple(label.shape[2:])}: give co-registered images"
                )
        with torch.autocast(self.device.type, enabled=self.amp):
            logits = self.inferer(image, network)  # [1, C_out, *S]
        return source_states(logits, self.options.source_output), label, mask, _image_affine(item["image"])

    def first_pass(
        self, network: nn.Module, mine: Sequence[dict], cache: RiskCache, statistics: Sequence[Any]
    ) -> dict[str, dict[str, Any]]:
        """The one source pass: per case, update each of ``statistics`` (``update(probs, label, mask)``) and keep
        the case's :class:`KeptPass` in ``cache``.

        Returns:
            per case id ``{"foreground_voxels": count}``, the manifest's per-case records so far.
        """
        cases: dict[str, dict[str, Any]] = {}
        for case in mine:
            probs, label, mask, affine = self.source_pass(network, case)
            for stats in statistics:
                stats.update(probs, label, mask)
            cases[case["case_id"]] = {"foreground_voxels": self.foreground(label, case["case_id"])}
            KeptPass.from_grid(probs, label, mask, affine).save(
                cache.kept_path(case["case_id"]), self.options.probability_dtype
            )
            del probs, label, mask
        return cases

    def pooled_maps(self, network: nn.Module, mine: Sequence[dict], cache: RiskCache) -> PassResult:
        """The paper's map (or the ``"foreground"`` control): pass 1 source model -> pooled LEEP counts (and the
        kept pass), pass 2 kept pass -> ``T`` per voxel -> risk -> NIfTI in ``cache``."""
        stats = LEEPStatistics(self.num_target_classes, self.num_source_classes)
        cases = self.first_pass(network, mine, cache, [stats])
        stats.all_reduce()
        conditional = stats.conditional()  # [Ct, Cs]
        log_t_sum = 0.0
        for case in mine:  # pass 2: kept probabilities -> transferability -> risk -> NIfTI
            one = KeptPass.load(cache.kept_path(case["case_id"]), self.device)
            transferability = pixel_transferability(one.probs, one.label, conditional).flatten()  # [n]
            log_t = torch.log(transferability.double().clamp_min(1e-12))  # [n]
            log_t_sum += float(log_t.sum())
            if self.options.map_type == "foreground":  # the control, not a risk: 1 on the target foreground, 0 elsewhere
                risk = (one.label > 0).flatten().to(transferability.dtype)
            else:
                risk = self.risk(transferability)
            risk_map = self.masked_map(risk, one.mask, case["case_id"])
            cases[case["case_id"]].update(
                risk=cache.write_map(case["case_id"], risk_map, one.affine), leep=float(log_t.mean())
            )
        return PassResult(cases, log_t_sum, stats)

    def location_maps(
        self, network: nn.Module, mine: Sequence[dict], cache: RiskCache, grid: Sequence[int]
    ) -> PassResult:
        """The location-wise map over the common ``grid`` (3 sizes, :func:`common_grid`): pass 1 source model ->
        ``P_l(y, z)`` (and the pooled counts, for the class table; and the kept pass), pass 2 kept pass ->
        ``LEEP_l``, pass 3 ``exp(LEEP_l)`` -> risk -> NIfTI in ``cache``. The extra entries are the patch size and
        the number of locations."""
        patch = self.options.location_patch
        stats = LocationLEEPStatistics(self.num_target_classes, self.num_source_classes, tuple(grid), patch)
        pooled = LEEPStatistics(self.num_target_classes, self.num_source_classes)
        cases = self.first_pass(network, mine, cache, [stats, pooled])
        stats.all_reduce()
        pooled.all_reduce()
        log_t_sum = 0.0
        for case in mine:  # pass 2: T with each voxel's location conditional -> log T per location
            one = KeptPass.load(cache.kept_path(case["case_id"]), self.device)
            locations = stats.location_index().to(self.device)[one.mask[0, 0]]  # [n]
            transferability = stats.transferability(one.probs, one.label, locations).flatten()  # [n]
            on_grid = torch.zeros(one.mask.shape, dtype=transferability.dtype, device=self.device)  # [1, 1, *S]
            on_grid[one.mask] = transferability
            stats.update_leep(on_grid, one.mask)
            log_t = torch.log(transferability.double().clamp_min(1e-12))  # [n]
            log_t_sum += float(log_t.sum())
            cases[case["case_id"]]["leep"] = float(log_t.mean())
        stats.all_reduce_leep()
        location_t = stats.leep_map().nan_to_num(0.0).exp().to(torch.float32)[None, None]  # [1, 1, *S], 1 off every mask
        for case in mine:  # pass 3: the case's mask only
            one = KeptPass.load(cache.kept_path(case["case_id"]), self.device)
            inside = location_t.to(self.device)[one.mask]  # [n]
            risk_map = self.masked_map(self.risk(inside), one.mask, case["case_id"])
            cases[case["case_id"]]["risk"] = cache.write_map(case["case_id"], risk_map, one.affine)
        return PassResult(cases, log_t_sum, pooled, {"location_patch": patch, "num_locations": stats.num_locations})

    def risk(self, transferability: torch.Tensor) -> torch.Tensor:
        """``[n]`` transfer risk of ``transferability [n]`` under the options' normalisation."""
        return transfer_risk(transferability.reshape(1, 1, -1), self.options.normalization).flatten()

    def masked_map(self, risk: torch.Tensor, mask: torch.Tensor, case_id: str) -> np.ndarray:
        """``[*S]`` float32 map of ``risk [n]`` at the voxels of ``mask [1, 1, *S]`` (row-major order), 0 outside;
        with the ``shuffle`` option its masked values permuted, by a permutation seeded by ``seed`` and ``case_id``."""
        inside = risk.flatten().cpu()  # [n]
        if self.options.shuffle:
            digest = hashlib.sha256(f"{self.options.seed}:{case_id}".encode()).hexdigest()
            generator = torch.Generator().manual_seed(int(digest[:15], 16))
            inside = inside[torch.randperm(inside.numel(), generator=generator)]
        risk_map = torch.zeros(mask.shape[2:], dtype=torch.float32)
        risk_map[mask[0, 0].cpu()] = inside.float()
        return risk_map.numpy()

    def foreground(self, label: torch.Tensor, case_id: str) -> int:
        """The whole case's foreground voxel count of ``label [1, 1, *S]`` under the target task (warns when there
        is none)."""
        foreground = int(torch.count_nonzero(label))
        if foreground == 0:
            logger.warning(
                "%s has no foreground under target task %r: a foreground-normalised loss uses its voxel count",
                case_id,
                self.target_task,
            )
        return foreground
