"""The risk-map stage: one transfer risk map per target training case, computed once and cached.

The stage orchestrates three parts, one job each:

- :mod:`.risk_options`: :class:`~transrisk_components.bundle.stages.risk_options.RiskMapOptions`, every choice the
  maps and statistics depend on, validated when it is built;
- :mod:`.risk_passes`: the passes over the cases. Pass 1 runs the source model over the target training cases
  (sliding window, whole volumes), once per case, accumulates the LEEP joint ``P(y, z)`` inside each case's mask
  (summed over ranks under DDP) and keeps the case's source probabilities on disk. Pass 2 reads them back, turns them
  into per-voxel transferability ``T`` and risk, and writes ``<case_id>_risk.nii.gz`` on the image grid with the
  image's affine (0 outside the mask). With ``map_type="location"`` the statistics are location-wise
  (:class:`~transrisk_components.method.transferability.LocationLEEPStatistics`): pass 1 accumulates ``P_l(y, z)``
  per patch location ``l`` of the common grid over all cases, pass 2 accumulates ``LEEP_l``, and pass 3 writes each
  case's map from its location's transferability ``exp(LEEP_l)``; passes 2 and 3 read what pass 1 kept. Only for
  datasets whose cases are co-registered (:attr:`~transrisk_components.data.registry.DatasetSpec.co_registered`) and
  whose image files all have one shape and affine; anything else is refused before the source model runs;
- :mod:`.risk_cache`: the cache folder ``<cache_root>/<key>/``, its manifest and the files kept between the passes.

The mask (``mask="nonzero"``, default) is the head: the voxels where the image is nonzero, the ones
``NormalizeIntensityd(nonzero=True)`` normalises. Without it the air around the head, trivially background,
dominates ``P(y | z)`` and the reported LEEP.

Memory and disk: nothing of a case outlives its iteration in memory, so the peak memory does not grow with the number
of target cases (on 128^3 phantom cases, keeping every case's float32 probabilities and int64 labels in memory between
the passes took peak RSS from 861 MB for 2 cases to 1,245 MB for 8, x1.45). What pass 1 keeps for the later passes
goes to disk instead, one file per case
(:class:`~transrisk_components.bundle.stages.risk_cache.KeptPass`, ``<cache folder>/.source_probabilities/<case_id>.pt``,
written atomically): the source probabilities ``p(z | v)`` (its softmax, or a sigmoid source's region states,
:mod:`~transrisk_components.method.source_outputs`) and the label at the masked voxels only, the mask as packed bits
and the affine. A full-size FeTS phantom case (4 source classes, 1.7-2.1 M head voxels of 240x240x155) took 30-37 MB
(float32), 16-20 MB with float16; every case of the rank waits at once between the passes (FeTS2022's 1,251 cases:
~40 GB, or ~23 GB with float16). The stage runs once per (source model, target set). ``float32`` keeps the
probabilities exactly (maps bit-identical to recomputing them with a second source pass); ``float16`` nearly halves
the disk and moves the maps by 3e-4 at most on the test phantom (``tests/test_risk_stage_one_pass.py`` bounds it at
2e-3), so it enters the cache key.

Cache: ``<cache_root>/<key>/`` where ``key`` is the digest of the stage's fingerprint (its resolved config, its input
files, the source model's identity and the package version; see :mod:`transrisk_components.bundle.workflow.fingerprint`),
given by the run. Maps and ``manifest.json`` are written atomically, the manifest last; a folder with a complete
manifest is reused. The fine-tuning stage reads the maps through the manifest
(:class:`~transrisk_components.bundle.io.risk_manifest.RiskManifest`).

Classes that will not transfer: the manifest also holds, per target class, the mean transferability ``T_y``, its
prior floor ``P(y)`` (what a source that knows nothing scores) and the information ``(T_y - P(y)) / (1 - P(y))``
(:func:`~transrisk_components.method.transferability.class_information`). A class whose information is below
``dead_class_margin`` (default 0.05: the source reaches less than 5% of the headroom above the floor) is *dead*:
:func:`report_risk_classes` logs a WARNING naming it on every run that uses the maps (computed or reused), and writes
the classes, the dead ones and the chosen action to ``eval/risk_stage_summary.json`` once the run has been accepted.
The action itself (``dead_classes``: ``"warn"``, ``"reinit"``, ``"scratch"``) is carried out when the target network
is initialised from the source, by :class:`~transrisk_components.bundle.engine.source_weights.SourceWeights`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.inferers import Inferer
from torch import nn

from transrisk_components.bundle.engine.source_model import read_source_state
from transrisk_components.bundle.stages.risk_cache import RiskCache
from transrisk_components.bundle.stages.risk_options import RiskMapOptions
from transrisk_components.bundle.stages.risk_passes import SourcePasses, common_grid
from transrisk_components.data.registry import get_dataset, num_classes
from transrisk_components.method.source_outputs import num_source_states
from transrisk_components.method.transferability import class_table, dead_class_names
from transrisk_components.utils.distributed import barrier, rank_and_world
from transrisk_components.utils.io import atomic_write_text

__all__ = ["RiskStage", "report_risk_classes"]

logger = logging.getLogger(__name__)


class RiskStage:
    """Risk maps of the target training cases under one source model.

    Args:
        dataset: registry name (``"fets"``, ``"iseg"``).
        datalist: target training cases ``{"case_id", "image", "label"}`` (target modality).
        source_task: task of the source model (sets ``Cs``).
        target_task: task of the target labels (sets ``Ct``).
        source_ckpt: source network weights: a ``state_dict``, a dict holding one under ``options.key_in_ckpt``, or a
            TorchScript file (:func:`~transrisk_components.bundle.engine.source_model.read_source_state`); only read.
        network: the source network architecture (weights are loaded from ``source_ckpt``).
        transform: the whole-volume preprocessing of a case (the config's ``validate#preprocessing``):
            ``{"image", "label", ...}`` paths -> ``image [C, *S]`` and ``label [1, *S]`` target-task classes on
            the image grid, the image carrying its file's affine. It must not crop or resample: the maps are
            written on the image file's grid.
        inferer: whole-volume inferer, e.g. ``SlidingWindowInferer``.
        cache_root: folder holding one sub-folder per cache key.
        key: the cache key (the stage fingerprint's digest, from the run): the maps go to ``cache_root/key``.
        options: the maps' and statistics' options (normalisation, mask, map type, kept-probability dtype, shuffle
            ablation and its seed, source output, checkpoint entry), see
            :class:`~transrisk_components.bundle.stages.risk_options.RiskMapOptions`; its defaults when ``None``.
        device: device of the source model.
        amp: autocast on CUDA.
        num_source_outputs: output channels of the source network (``None``: the classes of ``source_task``).
        source_datalist: the same cases with the images the source network reads, one per its input channel (e.g.
            the T1ce, T1, T2, FLAIR images for a 4-channel source and a FLAIR target); ``None`` feeds it the cases'
            own images. The statistics mask, the labels and the maps' grid always come from ``datalist``.

    Raises:
        ValueError: ``map_type="location"`` on a dataset whose cases are not co-registered, or a ``source_datalist``
            without every target training case.
    """

    def __init__(
        self,
        dataset: str,
        datalist: list[dict],
        source_task: str,
        target_task: str,
        source_ckpt: str,
        network: nn.Module,
        transform: Callable[[dict], dict],
        inferer: Inferer,
        cache_root: str,
        key: str,
        options: RiskMapOptions | None = None,
        device: str | torch.device = "cpu",
        amp: bool = False,
        num_source_outputs: int | None = None,
        source_datalist: Sequence[dict] | None = None,
    ) -> None:
        self.options = RiskMapOptions() if options is None else options
        self.dataset = dataset
        self.cases = list(datalist)
        self.source_task = source_task
        self.target_task = target_task
        self.source_ckpt = Path(source_ckpt)
        self.network = network
        self.cache_root = Path(cache_root)
        self.key = str(key)
        spec = get_dataset(dataset)
        if self.options.map_type == "location" and not spec.co_registered:
            raise ValueError(
                f"risk map 'location' pools statistics per voxel location over all cases, which needs cases "
                f"co-registered to one grid; {dataset} cases are not (each subject is in its own space): "
                "use risk map 'pooled'"
            )
        self.device = torch.device(device)
        outputs = num_classes(spec, source_task) if num_source_outputs is None else int(num_source_outputs)
        self.num_source_classes = num_source_states(outputs, self.options.source_output)
        source_images = None
        if source_datalist is not None:
            source_images = {c["case_id"]: c["image"] for c in source_datalist}
            missing = [c["case_id"] for c in self.cases if c["case_id"] not in source_images]
            if missing:
                raise ValueError(f"source_datalist lacks the target training cases {missing}: give the same cases")
        self.num_target_classes = num_classes(spec, target_task)
        self.target_class_names = tuple(spec.tasks[target_task])
        self.passes = SourcePasses(
            transform,
            inferer,
            self.options,
            self.num_target_classes,
            self.num_source_classes,
            target_task,
            self.device,
            amp and self.device.type == "cuda",
            source_images,
        )

    def run(self) -> dict[str, Any]:
        """Compute the maps unless the cache folder ``cache_root/key`` holds a complete manifest; return the manifest.

        Manifest: ``{"key", "source_ckpt", "map", "leep", "num_voxels", "conditional", "joint", "classes": {name:
        {"index", "transferability", "prior", "information"}}, "cases": {case_id: {"risk": file name, "leep": float,
        "foreground_voxels": int}}}`` (map files relative to the manifest's folder), plus ``"location_patch"`` and
        ``"num_locations"`` for the location-wise map. ``conditional`` (``P(y | z)``, ``[Ct, Cs]``), ``joint``
        (``P(y, z)``, ``[Ct, Cs]``) and ``classes`` come from the pooled statistics whatever the map; ``leep`` is the
        mean ``log T`` of the map's own statistics over every masked voxel.
        """
        cache = RiskCache(self.cache_root, self.key)
        barrier()  # every rank decides on the same cache state
        manifest = cache.complete_manifest()
        if manifest is not None:
            logger.info("risk maps reused from %s", cache.folder)
            return manifest
        if rank_and_world()[0] == 0:  # left by a killed run; this run holds the bundle's lock
            cache.remove_leftovers()
        barrier()
        logger.info("computing risk maps of %d target cases in %s", len(self.cases), cache.folder)
        return self._compute(cache.folder)

    def _load_network(self) -> nn.Module:
        state = read_source_state(self.source_ckpt, self.options.key_in_ckpt)
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

    @torch.no_grad()
    def _compute(self, folder: Path) -> dict[str, Any]:
        """Run the passes into the cache folder ``folder`` and write its manifest (rank 0); return the manifest."""
        cache = RiskCache(folder.parent, folder.name)
        rank, world = rank_and_world()
        network = self._load_network()
        mine = self.cases[rank::world]
        try:
            if self.options.map_type == "location":
                result = self.passes.location_maps(network, mine, cache, common_grid(self.cases))
            else:
                result = self.passes.pooled_maps(network, mine, cache)
        finally:  # the kept passes are this stage's temporaries, also when it fails
            cache.remove_kept(c["case_id"] for c in mine)
        result = result.gathered()  # every rank's kept files are gone after it
        num_voxels = result.pooled.num_voxels
        manifest = {
            "key": cache.key,
            "source_ckpt": str(self.source_ckpt),
            "map": self.options.map_type,
            "leep": result.log_t_sum / max(num_voxels, 1),
            "num_voxels": num_voxels,
            "conditional": result.pooled.conditional().tolist(),
            "joint": result.pooled.joint.tolist(),
            "classes": class_table(result.pooled, self.target_class_names),
            **result.extra,
            "cases": result.cases,
        }
        if rank == 0:
            cache.remove_kept_folder()
            cache.write_manifest(manifest)
            logger.info(
                "risk maps written to %s (%s map, LEEP %.4f over %d voxels, mask %r)",
                cache.folder,
                self.options.map_type,
                manifest["leep"],
                num_voxels,
                self.options.mask,
            )
        barrier()
        return manifest


def report_risk_classes(
    manifest: dict[str, Any],
    margin: float,
    action: str,
    mask: str,
    summary_path: str | Path | None,
    source_ckpt: str | Path,
) -> list[str]:
    """Log a WARNING per class the source gives no information about, and write the risk stage's summary.

    Called by the run on every run that uses the maps (computed or reused), once the run has been accepted.

    Args:
        manifest: the risk stage's manifest (:meth:`RiskStage.run`).
        margin: information below which a class is dead (``risk#dead_class_margin``).
        action: what fine-tuning does about dead classes (``risk#dead_classes``), named in the summary.
        mask: the statistics mask of the maps (``risk#mask``), named in the summary.
        summary_path: JSON file (rank 0 writes it) with the LEEP, the per-class table (``T_y``, floor ``P(y)``,
            information), the dead classes and the action (``eval/risk_stage_summary.json``); ``None`` writes nothing.
        source_ckpt: the source model the maps came from (named in the summary).

    Returns:
        The dead classes' names.
    """
    table = manifest["classes"]
    dead = dead_class_names(table, margin)
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
            margin,
        )
    if not dead:
        logger.info(
            "every target class gets information from the source (information >= %.3f): %s",
            margin,
            ", ".join(f"{n} {v['information']:.3f}" for n, v in table.items() if v["information"] is not None),
        )
    if summary_path is not None and rank_and_world()[0] == 0:
        summary = {
            "source_ckpt": str(source_ckpt),
            "cache": manifest["key"],
            "leep": manifest["leep"],
            "num_voxels": manifest["num_voxels"],
            "mask": mask,
            "classes": table,
            "dead_class_margin": margin,
            "dead_classes": dead,
            "dead_class_action": action,
        }
        atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    return dead
