"""The risk-map stage: one transfer risk map per target training case, computed once and cached.

Pass 1 runs the source model over the target training cases (sliding window, whole volumes), once per case,
accumulates the LEEP joint ``P(y, z)`` inside each case's mask (summed over ranks under DDP) and keeps the case's
source probabilities on disk. Pass 2 reads them back, turns them into per-voxel transferability ``T`` and risk,
and writes ``<case_id>_risk.nii.gz`` on the image grid with the image's affine (0 outside the mask).

With ``map_type="location"`` the statistics are location-wise
(:class:`~transrisk_components.method.transferability.LocationLEEPStatistics`): pass 1 accumulates ``P_l(y, z)``
per patch location ``l`` of the common grid over all cases, pass 2 accumulates ``LEEP_l``, and pass 3 writes each
case's map from its location's transferability ``exp(LEEP_l)``; passes 2 and 3 read what pass 1 kept. Only for
datasets whose cases are co-registered (:attr:`~transrisk_components.data.registry.DatasetSpec.co_registered`) and
whose image files all have one shape and affine; anything else is refused before the source model runs.

The mask (``mask="nonzero"``, default) is the head: the voxels where the image is nonzero, the ones
``NormalizeIntensityd(nonzero=True)`` normalises. Without it the air around the head, trivially background,
dominates ``P(y | z)`` and the reported LEEP.

Memory and disk: nothing of a case outlives its iteration in memory (labels are kept as uint8 while a case is
processed), so the peak memory does not grow with the number of target cases (on 128^3 phantom cases, keeping
every case's float32 probabilities and int64 labels in memory between the passes took peak RSS from 861 MB for 2
cases to 1,245 MB for 8, x1.45). What pass 1 keeps for the later passes goes to disk instead, one file per case
(:class:`KeptPass`, ``<cache folder>/.source_probabilities/<case_id>.pt``, written atomically): the source
probabilities ``p(z | v)`` (its softmax, or a sigmoid source's region states,
:mod:`~transrisk_components.method.source_outputs`) and the label at the masked voxels only, the mask as packed bits and the affine -- ``Cs * 4 + 1`` bytes
per masked voxel with ``probabilities="float32"`` (``Cs * 2 + 1`` with ``"float16"``) plus 1/8 byte per voxel.
A full-size FeTS phantom case (4 source classes, 1.7-2.1 M head voxels of 240x240x155) took 30-37 MB (float32),
16-20 MB with float16; every case of the rank waits at once between the passes (FeTS2022's 1,251 cases: ~40 GB,
or ~23 GB with float16). The files are the stage's own temporaries: deleted when the maps are written (or the
stage fails), and any a killed run left are deleted before the stage computes again, so they are never reused. The
stage runs once per (source model, target set). ``float32`` keeps the probabilities exactly (maps bit-identical to
recomputing them with a second source pass); ``float16`` nearly halves the disk and moves the maps by 3e-4 at most
on the test phantom (``tests/test_risk_stage_one_pass.py`` bounds it at 2e-3), so it enters the cache key.

Cache: ``<cache_root>/<key>/`` where ``key`` is the stage's fingerprint key
(:class:`~transrisk_components.bundle.fingerprint.StageFingerprint`: the settings listed under
``fingerprint#risk`` in the bundle config -- inferer, risk options, amp --, the size and mtime of every image
and label file, the source checkpoint's SHA-256 and the package version). Maps and ``manifest.json`` are
written atomically, the manifest last; a folder with a complete manifest is reused. The manifest names the maps
relative to its folder, so a moved cache still reads.

Classes that will not transfer: the manifest also holds, per target class, the mean transferability ``T_y``, its
prior floor ``P(y)`` (what a source that knows nothing scores) and the information ``(T_y - P(y)) / (1 - P(y))``
(:func:`~transrisk_components.method.transferability.class_information`). A class whose information is below
``dead_class_margin`` (default 0.05: the source reaches less than 5% of the headroom above the floor) is *dead*:
the stage logs a WARNING naming it every time it runs (computed or reused), and writes the classes, the dead ones
and the chosen action to ``summary_path`` (``eval/risk_stage_summary.json`` in the bundles). The action itself
(``dead_classes``: ``"warn"``, ``"reinit"``, ``"scratch"``) is carried out when the target network is initialised
from the source, by :class:`~transrisk_components.bundle.engine.SourceWeights`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
from transrisk_components.utils.io import (
    atomic_torch_save,
    atomic_write,
    atomic_write_text,
    load_checkpoint,
    remove_partial_writes,
)
from transrisk_components.method.masks import RISK_MASKS, image_mask
from transrisk_components.method.risk import transfer_risk
from transrisk_components.method.source_outputs import num_source_states, source_states
from transrisk_components.method.transferability import (
    LEEPStatistics,
    LocationLEEPStatistics,
    class_table,
    dead_class_names,
    pixel_transferability,
)
from transrisk_components.bundle.fingerprint import StageFingerprint
from transrisk_components.bundle.source_model import read_source_state

__all__ = [
    "DEAD_CLASS_ACTIONS",
    "PROBABILITY_STORAGE",
    "KeptPass",
    "RiskDatalist",
    "RiskStage",
]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
#: Sub-folder of a cache folder holding what pass 1 keeps for the later passes (one file per case, temporary).
KEPT = ".source_probabilities"

#: Storage dtypes of the source probabilities kept between the passes (see :class:`RiskStage`).
PROBABILITY_STORAGE = {"float32": torch.float32, "float16": torch.float16}

#: Where the conditional ``P(y | z)`` is pooled, or the label-only control (see :class:`RiskStage`).
RISK_MAPS = ("pooled", "location", "foreground")

#: What fine-tuning does about target classes the source gives no information about (see :class:`RiskStage`).
DEAD_CLASS_ACTIONS = ("warn", "reinit", "scratch")


def _image_affine(image: torch.Tensor) -> np.ndarray:
    """The 4x4 affine of a loaded MetaTensor as read from its file."""
    meta = getattr(image, "meta", {})
    affine = meta.get("original_affine", meta.get("affine"))
    if affine is None:
        raise ValueError(f"image {meta.get('filename_or_obj', '?')} carries no affine")
    return np.asarray(affine, dtype=np.float64)


@dataclass
class KeptPass:
    """One case's source pass as the later passes need it: the voxels of its statistics mask only.

    Attributes:
        probs: ``[1, Cs, n]`` source state probabilities at the ``n`` voxels of ``mask`` (row-major order).
        label: ``[1, 1, n]`` uint8 target classes at those voxels.
        mask: ``[1, 1, *S]`` bool statistics mask.
        affine: the image's 4x4 affine.
    """

    probs: torch.Tensor
    label: torch.Tensor
    mask: torch.Tensor
    affine: np.ndarray

    @classmethod
    def from_grid(cls, probs: torch.Tensor, label: torch.Tensor, mask: torch.Tensor, affine: np.ndarray) -> KeptPass:
        """From ``probs [1, Cs, *S]``, ``label [1, 1, *S]`` and ``mask [1, 1, *S]`` on the image grid."""
        inside = mask[0, 0]
        return cls(probs[:, :, inside], label[:, :, inside], mask, affine)

    def save(self, path: Path, dtype: torch.dtype) -> None:
        """Write it to ``path`` atomically, the probabilities as ``dtype``, the mask as packed bits."""
        bits = np.packbits(self.mask.cpu().numpy().reshape(-1))
        record = {
            "probs": self.probs.to(dtype).cpu(),
            "label": self.label.cpu(),
            "mask_bits": torch.from_numpy(bits),
            "shape": list(self.mask.shape),
            "affine": torch.from_numpy(self.affine),
        }
        atomic_torch_save(record, path)

    @classmethod
    def load(cls, path: Path, device: torch.device) -> KeptPass:
        """Read what :meth:`save` wrote, on ``device``; the probabilities as float32."""
        record = load_checkpoint(
            path, "delete it; the risk stage recomputes its temporary files", map_location="cpu", weights_only=True
        )
        shape = record["shape"]
        bits = np.unpackbits(record["mask_bits"].numpy(), count=math.prod(shape))
        mask = torch.from_numpy(bits.astype(bool).reshape(shape))
        probs = record["probs"].to(device, torch.float32)
        return cls(probs, record["label"].to(device), mask.to(device), record["affine"].numpy())


class RiskStage:
    """Risk maps of the target training cases under one source model.

    Args:
        enabled: when false, :meth:`datalist` returns the cases unchanged and nothing is computed.
        dataset: registry name (``"fets"``, ``"iseg"``).
        datalist: target training cases ``{"case_id", "image", "label"}`` (target modality).
        source_task: task of the source model (sets ``Cs``).
        target_task: task of the target labels (sets ``Ct``).
        source_ckpt: source network weights: a ``state_dict``, a dict holding one under ``key_in_ckpt``, or a
            TorchScript file (:func:`~transrisk_components.bundle.source_model.read_source_state`); only read.
        network: the source network architecture (weights are loaded from ``source_ckpt``).
        transform: the whole-volume preprocessing of a case (the config's ``validate#preprocessing``):
            ``{"image", "label", ...}`` paths -> ``image [C, *S]`` and ``label [1, *S]`` target-task classes on
            the image grid, the image carrying its file's affine. It must not crop or resample: the maps are
            written on the image file's grid.
        inferer: whole-volume inferer, e.g. ``SlidingWindowInferer``.
        cache_root: folder holding one sub-folder per cache key.
        fingerprint: what determines the maps (its ``key()`` names the cache folder).
        normalization: risk normalisation, see :func:`transrisk_components.method.risk.transfer_risk`
            (``"minmax"`` and ``"neglog_minmax"`` span the masked voxels only).
        mask: voxels the LEEP statistics, the reported LEEP and the maps cover: ``"nonzero"`` (default) the
            voxels where any image channel is nonzero -- the brain, the voxels ``NormalizeIntensityd(nonzero=True)``
            normalises -- or ``"all"`` (air included). Maps are 0 outside the mask.
        map_type: ``"pooled"`` (default): one ``P(y | z)`` over every voxel of every case, each voxel's ``T`` from
            its own source prediction -- the paper's map, different in every case. ``"location"``: ``P_l(y | z)``
            and ``LEEP_l`` per location (cube of ``location_patch`` voxels) of the common grid, pooled over all
            cases; a voxel's transferability is its location's ``exp(LEEP_l)`` (the geometric mean of ``T`` there),
            so all cases share one map (up to their masks). With ``normalization="complement"`` and the loss
            scheme ``"inverse"`` at strength 1 the weight is ``exp(-LEEP_l)``. Needs co-registered cases.
            ``"foreground"``: a control, not a transfer risk map: the pooled statistics (LEEP, class table) as
            for ``"pooled"``, but each case's map is 1 on its target-task foreground and 0 elsewhere, whatever the
            normalisation -- a foreground class weight (``1 + strength`` under the linear scheme) with no
            transferability in it.
        location_patch: edge in voxels of the locations of ``map_type="location"``.
        probabilities: storage dtype of each case's source probabilities on disk between the passes
            (:data:`PROBABILITY_STORAGE`): ``"float32"`` (default; the maps are exactly those of a second source
            pass) or ``"float16"`` (half the disk; the maps change by up to ~1e-3, so a cache key of its own).
        shuffle: ablation: permute each map's values inside its mask at random, keeping the values but not where
            they are -- the "random map" control of the experiments. Each case has its own permutation, seeded
            by a hash of ``seed`` and its case id.
        seed: seed of the permutations when ``shuffle`` is set.
        device: device of the source model.
        amp: autocast on CUDA.
        dead_classes: what fine-tuning does about target classes the source gives no information about
            (:data:`DEAD_CLASS_ACTIONS`): ``"warn"`` (default) only warns; ``"reinit"`` re-initialises their
            output channels after the source weights are loaded; ``"scratch"`` starts from random weights when no
            foreground class transfers. Carried out by :class:`~transrisk_components.bundle.engine.SourceWeights`;
            the stage validates it, names it in its warning and writes it to the summary.
        dead_class_margin: a class is dead when its information ``(T_y - P(y)) / (1 - P(y))`` is below this
            (see :func:`~transrisk_components.method.transferability.dead_classes`). Not part of the cache key:
            the maps do not depend on it.
        summary_path: JSON file (rank 0 writes it on every run) with the LEEP, the per-class table (``T_y``,
            floor ``P(y)``, information), the dead classes and the action; ``None`` writes nothing.
        num_source_outputs: output channels of the source network (``None``: the classes of ``source_task``).
        source_output: how those channels become the source states ``z`` of LEEP
            (:func:`~transrisk_components.method.source_outputs.source_states`): ``"softmax"`` (default: ``Cs``
            classes) or ``"sigmoid"`` (independent regions: their ``2^Cs`` on/off combinations).
        key_in_ckpt: the entry of the checkpoint dict holding the ``state_dict`` (``None``: the file is one).
        source_datalist: the same cases with the images the source network reads, one per its input channel (e.g.
            the T1ce, T1, T2, FLAIR images for a 4-channel source and a FLAIR target); ``None`` feeds it the cases'
            own images. The statistics mask, the labels and the maps' grid always come from ``datalist``.
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
        map_type: str = "pooled",
        location_patch: int = 8,
        probabilities: str = "float32",
        shuffle: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
        amp: bool = False,
        dead_classes: str = "warn",
        dead_class_margin: float = 0.05,
        summary_path: str | None = None,
        num_source_outputs: int | None = None,
        source_output: str = "softmax",
        key_in_ckpt: str | None = None,
        source_datalist: Sequence[dict] | None = None,
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
        if map_type not in RISK_MAPS:
            raise ValueError(f"unknown risk map {map_type!r}; choose one of {RISK_MAPS}")
        if int(location_patch) < 1:
            raise ValueError(f"risk location_patch must be >= 1 voxel, got {location_patch}")
        if probabilities not in PROBABILITY_STORAGE:
            raise ValueError(
                f"unknown risk#probabilities {probabilities!r}; choose one of {tuple(PROBABILITY_STORAGE)}"
            )
        spec = get_dataset(dataset)
        if map_type == "location" and not spec.co_registered:
            raise ValueError(
                f"risk map 'location' pools statistics per voxel location over all cases, which needs cases "
                f"co-registered to one grid; {dataset} cases are not (each subject is in its own space): "
                "use risk map 'pooled'"
            )
        if dead_classes not in DEAD_CLASS_ACTIONS:
            raise ValueError(f"unknown risk#dead_classes {dead_classes!r}; choose one of {DEAD_CLASS_ACTIONS}")
        if not 0.0 <= float(dead_class_margin) <= 1.0:
            raise ValueError(f"risk#dead_class_margin must be in [0, 1], got {dead_class_margin}")
        self.dead_class_action = dead_classes
        self.dead_class_margin = float(dead_class_margin)
        self.summary_path = None if summary_path is None else Path(summary_path)
        self.normalization = normalization
        self.mask = mask
        self.map_type = map_type
        self.location_patch = int(location_patch)
        self.probability_dtype = PROBABILITY_STORAGE[probabilities]
        self.shuffle = shuffle
        self.seed = seed
        self.device = torch.device(device)
        self.amp = amp and self.device.type == "cuda"
        outputs = num_classes(spec, source_task) if num_source_outputs is None else int(num_source_outputs)
        self.num_source_classes = num_source_states(outputs, source_output)
        self.source_output = source_output
        self.key_in_ckpt = key_in_ckpt
        self.source_images = None
        if source_datalist is not None:
            self.source_images = {c["case_id"]: c["image"] for c in source_datalist}
            missing = [c["case_id"] for c in self.cases if c["case_id"] not in self.source_images]
            if missing:
                raise ValueError(f"source_datalist lacks the target training cases {missing}: give the same cases")
        self.num_target_classes = num_classes(spec, target_task)
        self.target_class_names = tuple(spec.tasks[target_task])
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

        Manifest: ``{"key", "fingerprint", "map", "leep", "num_voxels", "conditional", "classes": {name: {"index",
        "transferability", "prior", "information"}}, "cases": {case_id: {"risk": file name, "leep": float,
        "foreground_voxels": int}}}`` (map files relative to the manifest's folder), plus ``"location_patch"`` and
        ``"num_locations"`` for the location-wise map. ``conditional`` (``[Ct, Cs]``) and ``classes`` come from the
        pooled statistics whatever the map; ``leep`` is the mean ``log T`` of the map's own statistics over every
        masked voxel. Dead classes are warned about (and the summary written) once per stage object.
        """
        if self._manifest is None:
            self._manifest = self._run()
            self._report_classes(self._manifest)
        return self._manifest

    def _run(self) -> dict[str, Any]:
        folder = self.cache_root / self.cache_key()
        barrier()  # every rank decides on the same cache state
        manifest_path = folder / MANIFEST
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text())
            complete = "classes" in manifest  # a cache of an older version lacks the per-class table: recompute
            if complete and all((folder / c["risk"]).is_file() for c in manifest["cases"].values()):
                logger.info("risk maps reused from %s (fingerprint unchanged)", folder)
                return manifest
        if rank_and_world()[0] == 0:  # left by a killed run; this run holds the bundle's lock
            remove_partial_writes(folder)
            shutil.rmtree(folder / KEPT, ignore_errors=True)
        barrier()
        logger.info("computing risk maps of %d target cases in %s", len(self.cases), folder)
        return self._compute(folder)

    def dead_class_names(self) -> list[str]:
        """Target classes the source gives no information about, at ``dead_class_margin`` (runs the stage)."""
        return dead_class_names(self.run()["classes"], self.dead_class_margin)

    def dead_class_indices(self) -> list[int]:
        """Indices (output channels of the target network) of :meth:`dead_class_names` (runs the stage)."""
        table = self.run()["classes"]
        return [table[name]["index"] for name in self.dead_class_names()]

    def foreground_transfers(self) -> bool:
        """Whether at least one present foreground class (index > 0) is not dead (runs the stage)."""
        table, dead = self.run()["classes"], set(self.dead_class_names())
        return any(v["index"] > 0 and v["prior"] > 0 and name not in dead for name, v in table.items())

    def _report_classes(self, manifest: dict[str, Any]) -> None:
        """Log a WARNING per dead class and write the summary (rank 0)."""
        table = manifest["classes"]
        dead = dead_class_names(table, self.dead_class_margin)
        for name in dead:
            entry = table[name]
            logger.warning(
                "the source gives no information about class %s (T_%s = %.4f, prior floor = %.4f, information %.3f "
                "< margin %.3f): consider re-initialising the head for it (--risk#dead_classes reinit) or training "
                "from scratch (--risk#dead_classes scratch, or --target_init random)",
                name,
                name,
                entry["transferability"],
                entry["prior"],
                entry["information"],
                self.dead_class_margin,
            )
        if not dead:
            logger.info(
                "every target class gets information from the source (information >= %.3f): %s",
                self.dead_class_margin,
                ", ".join(f"{n} {v['information']:.3f}" for n, v in table.items() if v["information"] is not None),
            )
        if self.summary_path is not None and rank_and_world()[0] == 0:
            summary = {
                "source_ckpt": str(self.source_ckpt),
                "cache": str(self.cache_root / manifest["key"]),
                "leep": manifest["leep"],
                "num_voxels": manifest["num_voxels"],
                "mask": self.mask,
                "classes": table,
                "dead_class_margin": self.dead_class_margin,
                "dead_classes": dead,
                "dead_class_action": self.dead_class_action,
            }
            atomic_write_text(self.summary_path, json.dumps(summary, indent=2) + "\n")

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
        state = read_source_state(self.source_ckpt, self.key_in_ckpt)
        try:
            self.network.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(
                f"source checkpoint {self.source_ckpt} does not fit the source network: {err}. Remedy: describe the "
                "checkpoint's network in source#network_def (its in_channels one per source_modality, its "
                "out_channels num_source_classes), and name the state_dict's entry with key_in_ckpt"
            ) from err
        # contiguous whatever the trainers chose (channels-last on CPU): the maps must not depend on which run id built
        # the shared source network first, and channels-last does not speed up this inference
        return self.network.to(self.device, memory_format=torch.contiguous_format).eval()

    def _source_pass(self, network: nn.Module, case: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
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
        mask = image_mask(image, self.mask, case["case_id"], case["image"])
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
        return source_states(logits, self.source_output), label, mask, _image_affine(item["image"])

    @staticmethod
    def _kept_path(kept: Path, case: dict) -> Path:
        """Where pass 1 keeps ``case`` (a file under the cache folder's :data:`KEPT` folder ``kept``)."""
        return kept / f"{case['case_id']}.pt"

    def _first_pass(
        self, network: nn.Module, mine: list[dict], kept: Path, statistics: Sequence[Any]
    ) -> dict[str, dict[str, Any]]:
        """The one source pass: per case, update each of ``statistics`` (``update(probs, label, mask)``) and keep
        the case's :class:`KeptPass` under ``kept``.

        Returns:
            per case id ``{"foreground_voxels": count}``, the manifest's per-case records so far.
        """
        cases: dict[str, dict[str, Any]] = {}
        for case in mine:
            probs, label, mask, affine = self._source_pass(network, case)
            for stats in statistics:
                stats.update(probs, label, mask)
            cases[case["case_id"]] = {"foreground_voxels": self._foreground(label, case["case_id"])}
            KeptPass.from_grid(probs, label, mask, affine).save(self._kept_path(kept, case), self.probability_dtype)
            del probs, label, mask
        return cases

    def _risk_map(self, risk: torch.Tensor, mask: torch.Tensor, case_id: str) -> np.ndarray:
        """``[*S]`` float32 map of ``risk [n]`` at the voxels of ``mask [1, 1, *S]`` (row-major order), 0 outside;
        for ``shuffle`` its masked values permuted per case."""
        inside = risk.flatten().cpu()  # [n]
        if self.shuffle:
            digest = hashlib.sha256(f"{self.seed}:{case_id}".encode()).hexdigest()
            generator = torch.Generator().manual_seed(int(digest[:15], 16))
            inside = inside[torch.randperm(inside.numel(), generator=generator)]
        risk_map = torch.zeros(mask.shape[2:], dtype=torch.float32)
        risk_map[mask[0, 0].cpu()] = inside.float()
        return risk_map.numpy()

    def _risk(self, transferability: torch.Tensor) -> torch.Tensor:
        """``[n]`` transfer risk of ``transferability [n]`` under the stage's normalisation."""
        return transfer_risk(transferability.reshape(1, 1, -1), self.normalization).flatten()

    def _write_map(self, folder: Path, case: dict, risk: torch.Tensor, mask: torch.Tensor, affine: np.ndarray) -> str:
        """Write ``<case_id>_risk.nii.gz`` from ``risk [n]`` at the voxels of ``mask [1, 1, *S]``; its file name."""
        risk_map = self._risk_map(risk, mask, case["case_id"])
        path = folder / f"{case['case_id']}_risk.nii.gz"
        atomic_write(path, lambda tmp, r=risk_map, a=affine: nib.save(nib.Nifti1Image(r, a), tmp), suffix=".nii.gz")
        return path.name

    def _foreground(self, label: torch.Tensor, case_id: str) -> int:
        """The whole case's foreground voxel count under the target task (warns when there is none)."""
        foreground = int(torch.count_nonzero(label))
        if foreground == 0:
            logger.warning(
                "%s has no foreground under target task %r: a foreground-normalised loss uses its voxel count",
                case_id,
                self.target_task,
            )
        return foreground

    def _check_common_grid(self) -> tuple[int, ...]:
        """The image grid shared by every case (read from the file headers, before any inference).

        Raises:
            ValueError: a case whose image shape or affine differs from the first case's; the message names both
                cases and files.
        """
        reference: tuple[str, str, tuple[int, ...], np.ndarray] | None = None
        for case in self.cases:
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

    def _pooled_maps(
        self, network: nn.Module, mine: list[dict], folder: Path, kept: Path
    ) -> tuple[dict, float, LEEPStatistics, dict]:
        """The paper's map (or the ``"foreground"`` control): pass 1 source model -> pooled LEEP counts (and the
        kept pass), pass 2 kept pass -> ``T`` per voxel -> risk -> NIfTI.

        Returns:
            per-case records, this rank's sum of ``log T`` over the masked voxels, the pooled statistics (all
            ranks), and the manifest's extra entries (none).
        """
        stats = LEEPStatistics(self.num_target_classes, self.num_source_classes)
        cases = self._first_pass(network, mine, kept, [stats])
        stats.all_reduce()
        conditional = stats.conditional()
        log_t_sum = 0.0
        for case in mine:  # pass 2: kept probabilities -> transferability -> risk -> NIfTI
            one = KeptPass.load(self._kept_path(kept, case), self.device)
            transferability = pixel_transferability(one.probs, one.label, conditional).flatten()  # [n]
            log_t = torch.log(transferability.double().clamp_min(1e-12))  # [n]
            log_t_sum += float(log_t.sum())
            if self.map_type == "foreground":  # the control, not a risk: 1 on the target foreground, 0 elsewhere
                risk = (one.label > 0).flatten().to(transferability.dtype)
            else:
                risk = self._risk(transferability)
            cases[case["case_id"]].update(
                risk=self._write_map(folder, case, risk, one.mask, one.affine), leep=float(log_t.mean())
            )
        return cases, log_t_sum, stats, {}

    def _location_maps(
        self, network: nn.Module, mine: list[dict], folder: Path, kept: Path
    ) -> tuple[dict, float, LEEPStatistics, dict]:
        """The location-wise map: pass 1 source model -> ``P_l(y, z)`` (and the pooled counts, for the class table;
        and the kept pass), pass 2 kept pass -> ``LEEP_l``, pass 3 ``exp(LEEP_l)`` -> risk -> NIfTI.

        Returns: as :meth:`_pooled_maps`; the extra entries are the patch size and the number of locations.
        """
        grid = self._check_common_grid()
        stats = LocationLEEPStatistics(self.num_target_classes, self.num_source_classes, grid, self.location_patch)
        pooled = LEEPStatistics(self.num_target_classes, self.num_source_classes)
        cases = self._first_pass(network, mine, kept, [stats, pooled])
        stats.all_reduce()
        pooled.all_reduce()
        log_t_sum = 0.0
        for case in mine:  # pass 2: T with each voxel's location conditional -> log T per location
            one = KeptPass.load(self._kept_path(kept, case), self.device)
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
            one = KeptPass.load(self._kept_path(kept, case), self.device)
            inside = location_t.to(self.device)[one.mask]  # [n]
            cases[case["case_id"]]["risk"] = self._write_map(folder, case, self._risk(inside), one.mask, one.affine)
        extra = {"location_patch": self.location_patch, "num_locations": stats.num_locations}
        return cases, log_t_sum, pooled, extra

    @torch.no_grad()
    def _compute(self, folder: Path) -> dict[str, Any]:
        rank, world = rank_and_world()
        network = self._load_network()
        mine = self.cases[rank::world]
        maps = self._location_maps if self.map_type == "location" else self._pooled_maps
        kept = folder / KEPT
        try:
            cases, log_t_sum, pooled, extra = maps(network, mine, folder, kept)
        finally:  # the kept passes are this stage's temporaries, also when it fails
            for case in mine:
                self._kept_path(kept, case).unlink(missing_ok=True)
        cases, log_t_sum = self._gather(cases, log_t_sum)  # every rank's kept files are gone after it
        num_voxels = pooled.num_voxels
        manifest = {
            "key": folder.name,
            "source_ckpt": str(self.source_ckpt),
            "fingerprint": self.fingerprint.current(),
            "map": self.map_type,
            "leep": log_t_sum / max(num_voxels, 1),
            "num_voxels": num_voxels,
            "conditional": pooled.conditional().tolist(),
            "classes": class_table(pooled, self.target_class_names),
            **extra,
            "cases": cases,
        }
        if rank == 0:
            shutil.rmtree(kept, ignore_errors=True)
            atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2))
            logger.info(
                "risk maps written to %s (%s map, LEEP %.4f over %d voxels, mask %r)",
                folder,
                self.map_type,
                manifest["leep"],
                num_voxels,
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
