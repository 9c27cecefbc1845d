"""Evaluation regions and per-case segmentation metrics (the reports are written by :mod:`~transrisk_components.bundle.handlers`).

Regions are defined on the raw label values of each dataset and evaluated on *class-index maps* (the
model's classes, as produced by :func:`transrisk_components.data.fets.fets_task_labels` and its iSeg
counterpart):

================ ============================= ========================================
dataset, task    classes (index -> raw value)  regions, in report order
================ ============================= ========================================
fets multiclass  0, 1, 2, 3 -> 0, 1, 2, 4      ET = 4, TC = 1|4, WT = 1|2|4
fets ET/TC/WT    0, 1 -> background, region    the task's own region
fets ED / NCR    0, 1 -> background, label     the task's own label (ED = 2, NCR = 1)
iseg multiclass  0, 1, 2, 3 -> 0, 10, 150, 250 CSF = 10, GM = 150, WM = 250
iseg CSF/GM/WM   0, 1 -> background, tissue    the task's own tissue
================ ============================= ========================================

FeTS regions follow the challenge's own ET, TC, WT order. MONAI's
``ConvertToMultiChannelBasedOnBratsClasses`` orders TC, WT, ET instead; nothing here uses it.

Per case and region three metrics are computed with MONAI's metric functions (the ones behind
``DiceMetric``, ``HausdorffDistanceMetric(percentile=95)`` and ``SurfaceDistanceMetric(symmetric=True)``),
distances in millimetres from the voxel spacing:

- both prediction and reference empty: Dice 1, HD95 0, ASD 0 (nothing to find, nothing found: a
  perfect answer, as in the BraTS ranking convention);
- exactly one of them empty: Dice 0, HD95 and ASD NaN (a surface distance to nothing is undefined).
  Summaries skip NaNs and report how many were skipped (``n_nan``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance

from transrisk_components.data.registry import get_dataset, num_classes

__all__ = [
    "DATASET_REGIONS",
    "CaseScore",
    "RegionChannels",
    "RegionMetrics",
    "region_masks",
    "region_names",
    "score_regions",
    "stack_regions",
    "summarise",
    "voxel_spacing",
]

#: Evaluation regions per dataset, in report order: region name -> the raw labels it unites.
DATASET_REGIONS: dict[str, dict[str, tuple[int, ...]]] = {
    "fets": {"ET": (4,), "TC": (1, 4), "WT": (1, 2, 4)},
    "iseg": {"CSF": (10,), "GM": (150,), "WM": (250,)},
}
MULTICLASS = "multiclass"
METRICS: tuple[str, ...] = ("dice", "hd95", "asd")


def region_names(dataset: str, task: str) -> tuple[str, ...]:
    """Names of the regions evaluated for ``task``, in report order (e.g. ``("ET", "TC", "WT")``).

    Raises:
        ValueError: unknown dataset or task (tasks are those of the dataset registry).
    """
    num_classes(get_dataset(dataset), task)
    return tuple(DATASET_REGIONS[dataset]) if task == MULTICLASS else (task,)


def _region_classes(dataset: str, task: str) -> dict[str, tuple[int, ...]]:
    """Region name -> the class indices (not raw values) that make it up, for ``task``'s classes."""
    if task != MULTICLASS:
        return {task: (1,)}
    raw = get_dataset(dataset).label_values
    return {name: tuple(raw.index(v) for v in values) for name, values in DATASET_REGIONS[dataset].items()}


def _check_class_map(class_map: torch.Tensor, dataset: str, task: str, what: str) -> None:
    if class_map.ndim < 3 or class_map.shape[1] != 1:
        raise ValueError(f"{what}: expected a class map [B, 1, *spatial], got shape {tuple(class_map.shape)}")
    n_classes = num_classes(get_dataset(dataset), task)
    values = torch.unique(class_map)
    bad = values[(values < 0) | (values >= n_classes) | (values != values.round())]
    if bad.numel():
        raise ValueError(
            f"{what}: values {bad[:10].tolist()} are not {dataset} {task!r} class indices 0..{n_classes - 1}"
            " (raw labels must be mapped to classes first; logits must be passed with all their channels)"
        )


def region_masks(class_map: torch.Tensor, dataset: str, task: str) -> dict[str, torch.Tensor]:
    """Boolean mask of every evaluation region.

    Args:
        class_map: class indices ``[B, 1, *spatial]`` (int or integral float), in ``task``'s classes.
        dataset: ``"fets"`` or ``"iseg"``.
        task: ``"multiclass"`` or one region name (binary task).

    Returns:
        Region name -> bool ``[B, 1, *spatial]``, in :func:`region_names` order.

    Raises:
        ValueError: unknown dataset/task, wrong shape, or values that are not class indices of the task.
    """
    region_names(dataset, task)
    _check_class_map(class_map, dataset, task, "region_masks")
    return {
        name: torch.isin(class_map, torch.as_tensor(classes, dtype=class_map.dtype, device=class_map.device))
        for name, classes in _region_classes(dataset, task).items()
    }


def stack_regions(class_map: torch.Tensor, dataset: str, task: str) -> torch.Tensor:
    """Regions as channels, the multi-label layout MONAI's metrics expect.

    Args:
        class_map: class indices ``[B, 1, *spatial]``; see :func:`region_masks`.

    Returns:
        bool ``[B, R, *spatial]``, channel ``r`` being region ``region_names(dataset, task)[r]``
        (FeTS: ET, TC, WT; iSeg: CSF, GM, WM; binary tasks: ``R = 1``).
    """
    return torch.cat(list(region_masks(class_map, dataset, task).values()), dim=1)


class RegionChannels:
    """Output transform for MONAI metric handlers: the evaluator's ``pred`` / ``label`` as region channels.

    With it a ``MeanDice(include_background=True)`` key metric averages the Dice of the regions the bundle reports
    (FeTS: ET, TC, WT; iSeg: CSF, GM, WM) instead of the label classes, so that the best checkpoint is chosen on the
    measure the evaluation reports. In a bundle config::

        {"_target_": "MeanDice", "include_background": true,
         "output_transform": {"_target_": "transrisk_components.bundle.handlers.metrics.RegionChannels",
                              "dataset": "fets", "task": "multiclass"}}

    Args:
        dataset: ``"fets"`` or ``"iseg"``.
        task: ``"multiclass"`` or a region name.
        keys: the engine output's prediction and label keys.

    ``engine.state.output`` is the decollated list of per-case dicts whose ``pred`` and ``label`` are one-hot (or
    scores) ``[C, *spatial]`` in the task's classes, or class maps ``[1, *spatial]``; the transform returns two
    lists of bool-as-float ``[R, *spatial]`` tensors, ``R = len(region_names(dataset, task))``.
    """

    def __init__(self, dataset: str, task: str, keys: tuple[str, str] = ("pred", "label")) -> None:
        self.dataset, self.task = dataset, task
        self.regions = region_names(dataset, task)
        self.keys = keys

    def __call__(self, output: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        items = output if isinstance(output, (list, tuple)) else [output]
        converted: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        for item in items:
            for values, key in zip(converted, self.keys):
                class_map = _to_class_map(item[key].unsqueeze(0), key)
                values.append(stack_regions(class_map, self.dataset, self.task)[0].float())
        return converted


def voxel_spacing(affine: torch.Tensor | np.ndarray) -> tuple[float, ...]:
    """Voxel sizes (mm) from an affine ``[N+1, N+1]``: the norms of its first ``N`` columns."""
    matrix = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=float)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
        raise ValueError(f"expected a square affine [N+1, N+1], got shape {matrix.shape}")
    n = matrix.shape[0] - 1
    return tuple(float(s) for s in np.linalg.norm(matrix[:n, :n], axis=0))


def score_regions(
    pred_regions: torch.Tensor,
    label_regions: torch.Tensor,
    spacing: Sequence[Sequence[float]] | None = None,
) -> dict[str, torch.Tensor]:
    """Dice, HD95 and symmetric ASD of every (case, region) pair, with the empty-region rules above.

    Args:
        pred_regions: bool (or 0/1) ``[B, R, *spatial]`` predicted regions.
        label_regions: bool (or 0/1) ``[B, R, *spatial]`` reference regions.
        spacing: voxel sizes per case (``B`` sequences of ``len(spatial)`` floats, mm); ``None`` means 1.

    Returns:
        ``{"dice": [B, R], "hd95": [B, R], "asd": [B, R]}`` float64 tensors on the CPU.
    """
    if pred_regions.shape != label_regions.shape or pred_regions.ndim < 3:
        raise ValueError(
            f"prediction {tuple(pred_regions.shape)} and reference {tuple(label_regions.shape)} regions must"
            " share one shape [B, R, *spatial]"
        )
    pred, label = pred_regions.bool().cpu(), label_regions.bool().cpu()
    batch, n_regions = pred.shape[:2]
    if spacing is not None and len(spacing) != batch:
        raise ValueError(f"got {len(spacing)} spacings for a batch of {batch} cases")
    dice = compute_dice(pred.float(), label.float(), include_background=True, ignore_empty=False).double()
    hd95 = torch.zeros(batch, n_regions, dtype=torch.float64)
    asd = torch.zeros(batch, n_regions, dtype=torch.float64)
    for b in range(batch):
        case_spacing = None if spacing is None else [float(s) for s in spacing[b]]
        for r in range(n_regions):
            has_pred, has_label = bool(pred[b, r].any()), bool(label[b, r].any())
            if has_pred != has_label:
                hd95[b, r] = asd[b, r] = math.nan
            elif has_pred:
                p, y = pred[b : b + 1, r : r + 1].float(), label[b : b + 1, r : r + 1].float()
                hd95[b, r] = float(
                    compute_hausdorff_distance(p, y, include_background=True, percentile=95, spacing=case_spacing)
                )
                asd[b, r] = float(
                    compute_average_surface_distance(
                        p, y, include_background=True, symmetric=True, spacing=case_spacing
                    )
                )
    return {"dice": dice, "hd95": hd95, "asd": asd}


@dataclass(frozen=True)
class CaseScore:
    """Metrics of one region of one case; one row of the per-case CSV (distances in mm, NaN if undefined)."""

    case_id: str
    region: str
    dice: float
    hd95: float
    asd: float


def _to_class_map(data: torch.Tensor, what: str) -> torch.Tensor:
    """``[B, C, *S]`` scores / one-hot (C > 1) -> argmax ``[B, 1, *S]``; class maps (C == 1) pass through."""
    if data.ndim < 3:
        raise ValueError(f"{what}: expected [B, C, *spatial], got shape {tuple(data.shape)}")
    tensor = data.as_tensor() if isinstance(data, MetaTensor) else torch.as_tensor(data)
    return tensor.argmax(dim=1, keepdim=True) if tensor.shape[1] > 1 else tensor


class RegionMetrics:
    """Accumulates per-case, per-region Dice / HD95 / ASD over an evaluation run.

    Args:
        dataset: ``"fets"`` or ``"iseg"``.
        task: ``"multiclass"`` or a region name (``"ET"``, ``"TC"``, ``"WT"``, ``"CSF"``, ``"GM"``, ``"WM"``).

    Example::

        metrics = RegionMetrics("fets", "multiclass")
        metrics.update(logits, label, ["FeTS21_Training_001"], spacing=[(1.0, 1.0, 1.0)])
        write_case_csv(metrics.scores, "eval/metrics_per_case.csv")
        write_summary_json(metrics.summary(), "eval/metrics_summary.json")
    """

    def __init__(self, dataset: str, task: str) -> None:
        self.dataset, self.task = dataset, task
        self.regions = region_names(dataset, task)
        self.scores: list[CaseScore] = []

    def reset(self) -> None:
        """Forget every case scored so far."""
        self.scores = []

    def update(
        self,
        pred: torch.Tensor,
        label: torch.Tensor,
        case_ids: Sequence[str],
        spacing: Sequence[Sequence[float]] | None = None,
    ) -> list[CaseScore]:
        """Score one batch.

        Args:
            pred: ``[B, C, *spatial]`` logits, probabilities or one-hot in the task's ``C`` classes (argmax
                is taken), or a class map ``[B, 1, *spatial]``. A single-channel sigmoid output must be
                thresholded to 0/1 first (``AsDiscreted(threshold=0.5)``).
            label: reference in the same class space, class map ``[B, 1, *spatial]`` or one-hot ``[B, C, ...]``.
            case_ids: ``B`` case identifiers.
            spacing: voxel sizes per case in mm (``B`` sequences); ``None`` scores distances in voxels.

        Returns:
            The new rows (``B * R``), also appended to :attr:`scores`.
        """
        pred_map, label_map = _to_class_map(pred, "prediction"), _to_class_map(label, "label")
        if len(case_ids) != pred_map.shape[0]:
            raise ValueError(f"got {len(case_ids)} case ids for a batch of {pred_map.shape[0]}")
        scores = score_regions(
            stack_regions(pred_map, self.dataset, self.task),
            stack_regions(label_map.to(pred_map.device), self.dataset, self.task),
            spacing,
        )
        rows = [
            CaseScore(str(case_id), region, *(float(scores[m][b, r]) for m in METRICS))
            for b, case_id in enumerate(case_ids)
            for r, region in enumerate(self.regions)
        ]
        self.scores.extend(rows)
        return rows

    def summary(self) -> dict[str, Any]:
        """Summary of the scored cases; see :func:`summarise`."""
        return {"dataset": self.dataset, "task": self.task, **summarise(self.scores, self.regions)}


def _describe(values: Sequence[float]) -> dict[str, float | int | None]:
    array = np.asarray(values, dtype=float)
    finite = array[~np.isnan(array)]
    if finite.size == 0:
        return {"mean": None, "std": None, "median": None, "n": 0, "n_nan": int(array.size)}
    return {
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "median": float(np.median(finite)),
        "n": int(finite.size),
        "n_nan": int(array.size - finite.size),
    }


def summarise(scores: Sequence[CaseScore], regions: Sequence[str] | None = None) -> dict[str, Any]:
    """Per-region statistics of per-case scores.

    Args:
        scores: rows from :class:`RegionMetrics`.
        regions: report order; defaults to the order of first appearance in ``scores``.

    Returns:
        ``{"n_cases": int, "regions": {region: {metric: {"mean", "std", "median", "n", "n_nan"}}}}`` where
        statistics skip NaN values (``n`` counts the values used, ``n_nan`` those skipped, ``std`` is the
        population standard deviation) and are ``None`` when no value is left.
    """
    order = list(regions) if regions is not None else list(dict.fromkeys(s.region for s in scores))
    return {
        "n_cases": len({s.case_id for s in scores}),
        "regions": {
            region: {m: _describe([getattr(s, m) for s in scores if s.region == region]) for m in METRICS}
            for region in order
        },
    }
