"""LEEP statistics of a source model over target voxels, and per-voxel transferability.

Notation (LEEP, Nguyen et al., ICML 2020, with voxels as samples):

- ``z`` ranges over the source model's classes (``Cs`` of them), ``p_source(z | v)`` is its softmax at voxel ``v``;
- ``y`` ranges over the target task's classes (``Ct`` of them), ``y_v`` is the target label at ``v``;
- the empirical joint ``P(y, z)`` is the sum over voxels with ``y_v = y`` of ``p_source(z | v)``, divided by the
  number of voxels; the empirical conditional is ``P(y | z) = P(y, z) / sum_y' P(y', z)``;
- the pixel-level transferability is ``T(v) = sum_z P(y_v | z) * p_source(z | v)``, the probability that the
  "expected empirical predictor" built on the source model assigns to the true label at ``v``;
- the LEEP score is the mean of ``log T(v)`` over the voxels;
- the **prior floor** is what a source that knows nothing scores: with a constant source ``P(y | z) = P(y)``, so
  ``T(v) = P(y_v)``, the mean transferability of class ``y`` is ``P(y)`` and LEEP is ``sum_y P(y) log P(y)``;
- the mean transferability over the voxels of class ``y`` has a closed form in the joint,
  ``T_y = sum_z P(y, z)^2 / (P(y) P(z)) = sum_z P(z | y) P(y | z)``, and ``T_y >= P(y)`` (Cauchy-Schwarz), with
  equality exactly when ``P(y | z) = P(y)`` for every source class: the source says nothing about ``y``.

Location-wise statistics (:class:`LocationLEEPStatistics`), for cases co-registered to one grid (an atlas): the
grid is cut into non-overlapping cubes of ``patch`` voxels, the *locations* ``l``; the joint ``P_l(y, z)`` is
accumulated per location over the voxels of every case that fall into it, each voxel's transferability uses its
location's conditional, ``T(v) = sum_z P_l(v)(y_v | z) p_source(z | v)``, and ``LEEP_l`` is the mean of ``log T`` over
the location's voxels of every case -- the pixel-wise transferability of the authors' earlier work, with small
patches instead of single voxels so that a handful of cases gives enough samples per location.

Tensors are channel-first: source probabilities ``[B, Cs, *spatial]``, labels and masks ``[B, 1, *spatial]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist


__all__ = [
    "LEEPStatistics",
    "LocationLEEPStatistics",
    "class_information",
    "class_table",
    "dead_class_names",
    "dead_classes",
    "leep",
    "pixel_transferability",
    "prior_floor_leep",
]

_PROB_SUM_TOLERANCE = 1e-3  # loose enough for float16 softmax (AMP), tight enough to catch logits


def _check_probs_and_labels(source_probs: torch.Tensor, target_labels: torch.Tensor, num_source_classes: int) -> None:
    """Raise ``ValueError`` unless ``source_probs [B,Cs,*S]`` and ``target_labels [B,1,*S]`` fit together."""
    if source_probs.ndim < 3:
        raise ValueError(f"source_probs must be [B, Cs, *spatial], got shape {tuple(source_probs.shape)}.")
    if source_probs.shape[1] != num_source_classes:
        raise ValueError(
            f"source_probs has {source_probs.shape[1]} source classes (channel dimension), "
            f"expected {num_source_classes}."
        )
    expected_label_shape = (source_probs.shape[0], 1, *source_probs.shape[2:])
    if tuple(target_labels.shape) != expected_label_shape:
        raise ValueError(
            f"target_labels must have shape {expected_label_shape} to match source_probs "
            f"{tuple(source_probs.shape)}, got {tuple(target_labels.shape)} (spatial shape or batch mismatch)."
        )
    if not torch.is_floating_point(source_probs):
        raise ValueError(f"source_probs must be floating point probabilities, got dtype {source_probs.dtype}.")
    if not torch.isfinite(source_probs).all():
        raise ValueError("source_probs contains NaN or Inf values.")
    if (source_probs < 0).any():
        raise ValueError("source_probs contains negative values: pass softmax probabilities, not logits.")
    sums = source_probs.sum(dim=1, dtype=torch.float64)
    worst = (sums - 1.0).abs().max().item()
    if worst > _PROB_SUM_TOLERANCE:
        raise ValueError(
            f"source_probs do not sum to 1 over the class dimension (largest deviation {worst:.3g}): "
            "apply softmax over dim=1 first."
        )


def _labels_as_indices(target_labels: torch.Tensor, num_target_classes: int) -> torch.Tensor:
    """Validate ``target_labels [B,1,*S]`` (integer-valued, any dtype) and return them as ``int64``."""
    if torch.is_floating_point(target_labels):
        if not torch.isfinite(target_labels).all():
            raise ValueError("target_labels contains NaN or Inf values.")
        if (target_labels != target_labels.round()).any():
            raise ValueError("target_labels must be integer class indices, found fractional values.")
    labels = target_labels.long()
    if labels.numel() > 0:
        low, high = labels.min().item(), labels.max().item()
        if low < 0 or high >= num_target_classes:
            bad = torch.unique(labels[(labels < 0) | (labels >= num_target_classes)]).tolist()
            raise ValueError(
                f"target_labels has values {bad} outside [0, {num_target_classes}): map raw label values to "
                "task class indices first (e.g. FeTS 4 -> 3)."
            )
    return labels


def _check_mask(mask: torch.Tensor, target_labels: torch.Tensor) -> torch.Tensor:
    """Validate a voxel mask ``[B,1,*S]`` against the labels and return it as ``bool``."""
    if tuple(mask.shape) != tuple(target_labels.shape):
        raise ValueError(f"mask must have the labels' shape {tuple(target_labels.shape)}, got {tuple(mask.shape)}.")
    mask = mask.bool()
    if not mask.any():
        raise ValueError("mask selects no voxels: LEEP statistics need at least one voxel.")
    return mask


def _sum_over_ranks(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor summed over all ``torch.distributed`` ranks (the same tensors when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensors
    home = tensors[0].device
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else home
    packed = torch.cat([t.reshape(-1) for t in tensors]).to(device)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    packed = packed.to(home)
    sizes = [t.numel() for t in tensors]
    return [part.reshape(t.shape).clone() for part, t in zip(packed.split(sizes), tensors)]


class LEEPStatistics:
    """Streaming accumulator of the empirical joint ``P(y, z)`` over target voxels.

    Counts are accumulated in float64, so any split of the data into ``update`` calls gives the same joint as
    one call over all of it (up to float64 rounding). Under ``torch.distributed``, every rank accumulates its own
    voxels and :meth:`all_reduce` sums the counts once, after the last update.

    Args:
        num_target_classes: ``Ct``, the number of target classes (label values ``0 .. Ct-1``).
        num_source_classes: ``Cs``, the number of source model output channels.

    Example::

        stats = LEEPStatistics(num_target_classes=4, num_source_classes=2)
        for batch in loader:
            stats.update(torch.softmax(source_net(batch["image"]), 1), batch["label"])
        stats.all_reduce()
        risk_input = pixel_transferability(probs, labels, stats.conditional())
    """

    def __init__(self, num_target_classes: int, num_source_classes: int) -> None:
        if num_target_classes < 1 or num_source_classes < 1:
            raise ValueError(
                f"class counts must be positive, got num_target_classes={num_target_classes}, "
                f"num_source_classes={num_source_classes}."
            )
        self.num_target_classes = int(num_target_classes)
        self.num_source_classes = int(num_source_classes)
        self._counts = torch.zeros(self.num_target_classes, self.num_source_classes, dtype=torch.float64)
        self._num_voxels = torch.zeros((), dtype=torch.float64)

    @torch.no_grad()
    def update(
        self, source_probs: torch.Tensor, target_labels: torch.Tensor, mask: torch.Tensor | None = None
    ) -> None:
        """Add the voxels of one batch.

        Args:
            source_probs: ``[B, Cs, *spatial]`` softmax of the source model, each voxel summing to 1 over ``Cs``.
            target_labels: ``[B, 1, *spatial]`` integer target class indices in ``[0, Ct)``.
            mask: optional ``[B, 1, *spatial]`` bool; only voxels where it is true are counted.
        """
        _check_probs_and_labels(source_probs, target_labels, self.num_source_classes)
        labels = _labels_as_indices(target_labels, self.num_target_classes)
        probs = source_probs.movedim(1, -1).reshape(-1, self.num_source_classes)  # [N, Cs]
        labels = labels.reshape(-1)  # [N]
        if mask is not None:
            keep = _check_mask(mask, target_labels).reshape(-1)
            probs, labels = probs[keep], labels[keep]
        counts = self._counts.to(probs.device)
        counts.index_add_(0, labels, probs.to(torch.float64))
        self._counts = counts
        self._num_voxels = self._num_voxels.to(probs.device) + labels.numel()

    @property
    def num_voxels(self) -> int:
        """Number of voxels accumulated so far (summed over ranks after :meth:`all_reduce`)."""
        return int(self._num_voxels.item())

    @property
    def joint(self) -> torch.Tensor:
        """Empirical joint ``P(y, z)``, float64 ``[Ct, Cs]`` summing to 1."""
        if self._num_voxels.item() == 0:
            raise ValueError("LEEPStatistics has no voxels yet: call update() before reading the joint.")
        return self._counts / self._num_voxels

    def conditional(self) -> torch.Tensor:
        """Empirical conditional ``P(y | z)``, float64 ``[Ct, Cs]``.

        Each column ``z`` that received probability mass sums to 1 over ``y``; a column with no mass (a source
        class the model never predicts) is all zeros, so it contributes nothing to the transferability.
        """
        joint = self.joint
        marginal_z = joint.sum(dim=0, keepdim=True)  # [1, Cs]
        return torch.where(marginal_z > 0, joint / marginal_z.clamp_min(torch.finfo(joint.dtype).tiny), 0.0)

    def class_prior(self) -> torch.Tensor:
        """Target class frequencies ``P(y)`` over the counted voxels, float64 ``[Ct]``."""
        return self.joint.sum(dim=1)

    def class_transferability(self) -> torch.Tensor:
        """Mean of ``T(v)`` over the voxels of each target class, float64 ``[Ct]`` in ``[P(y), 1]``.

        Computed from the joint alone (see the module notes): ``T_y = sum_z P(y, z)^2 / (P(y) P(z))``. A class with
        no voxels is NaN.
        """
        joint = self.joint
        prior_y = joint.sum(dim=1)  # [Ct]
        marginal_z = joint.sum(dim=0)  # [Cs]
        tiny = torch.finfo(joint.dtype).tiny
        per_z = torch.where(marginal_z > 0, joint.square() / marginal_z.clamp_min(tiny), 0.0)  # [Ct, Cs]
        return torch.where(prior_y > 0, per_z.sum(dim=1) / prior_y.clamp_min(tiny), torch.nan)

    def all_reduce(self) -> None:
        """Sum the counts over all ``torch.distributed`` ranks; a no-op when distributed is not initialised.

        Call it exactly once, after every rank's last :meth:`update`.
        """
        self._counts, self._num_voxels = _sum_over_ranks([self._counts, self._num_voxels])

    def state_dict(self) -> dict[str, Any]:
        """The accumulated counts (on the CPU) and class counts, for checkpointing or caching."""
        return {
            "num_target_classes": self.num_target_classes,
            "num_source_classes": self.num_source_classes,
            "counts": self._counts.detach().cpu().clone(),
            "num_voxels": float(self._num_voxels.item()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore counts saved by :meth:`state_dict`; the class counts must match this accumulator's."""
        shape = (state["num_target_classes"], state["num_source_classes"])
        if shape != (self.num_target_classes, self.num_source_classes) or tuple(state["counts"].shape) != shape:
            raise ValueError(
                f"state holds {shape[0]} target x {shape[1]} source classes, this accumulator has "
                f"{self.num_target_classes} x {self.num_source_classes}."
            )
        self._counts = state["counts"].to(torch.float64).clone()
        self._num_voxels = torch.tensor(float(state["num_voxels"]), dtype=torch.float64)


class LocationLEEPStatistics:
    """Location-wise LEEP over cases that share one grid: ``P_l(y | z)`` and ``LEEP_l`` per patch location ``l``.

    Two passes over the same cases (see the module notes): :meth:`update` accumulates the joint per location;
    then, with the conditionals fixed, :meth:`transferability` gives each voxel's ``T`` and :meth:`update_leep`
    accumulates ``log T`` per location, from which :meth:`leep_map` reads ``LEEP_l`` back onto the grid. Counts
    are float64; under ``torch.distributed`` call :meth:`all_reduce` once after the last :meth:`update` and
    :meth:`all_reduce_leep` once after the last :meth:`update_leep`.

    Args:
        num_target_classes: ``Ct``.
        num_source_classes: ``Cs``.
        spatial_shape: the common grid ``S`` of every case (e.g. ``(240, 240, 155)``).
        patch: edge of the cubic locations in voxels (``>= 1``); the last location along an axis is cut short when
            ``patch`` does not divide the grid.

    Example::

        stats = LocationLEEPStatistics(4, 2, spatial_shape=(240, 240, 155), patch=8)
        for probs, labels, mask in cases:       # probs [1, Cs, *S], labels / mask [1, 1, *S]
            stats.update(probs, labels, mask)
        for probs, labels, mask in cases:
            stats.update_leep(stats.transferability(probs, labels), mask)
        leep_per_voxel = stats.leep_map()       # [*S], LEEP_l of each voxel's location
    """

    def __init__(
        self, num_target_classes: int, num_source_classes: int, spatial_shape: Sequence[int], patch: int
    ) -> None:
        if num_target_classes < 1 or num_source_classes < 1:
            raise ValueError(
                f"class counts must be positive, got num_target_classes={num_target_classes}, "
                f"num_source_classes={num_source_classes}."
            )
        if int(patch) < 1 or not spatial_shape or any(int(n) < 1 for n in spatial_shape):
            raise ValueError(f"need patch >= 1 and a non-empty grid, got patch={patch}, spatial_shape={spatial_shape}.")
        self.num_target_classes = int(num_target_classes)
        self.num_source_classes = int(num_source_classes)
        self.spatial_shape = tuple(int(n) for n in spatial_shape)
        self.patch = int(patch)
        cells = [math.ceil(n / self.patch) for n in self.spatial_shape]
        index = torch.zeros((), dtype=torch.long)
        for axis, n in enumerate(self.spatial_shape):  # row-major location index of every voxel
            along = torch.arange(n) // self.patch
            index = index.unsqueeze(-1) * cells[axis] + along.view(*([1] * axis), n)
        self._location = index  # [*S] long in [0, L)
        self.num_locations = math.prod(cells)
        self._counts = torch.zeros(self.num_locations, self.num_target_classes, self.num_source_classes, dtype=torch.float64)
        self._num_voxels = torch.zeros((), dtype=torch.float64)
        self._log_t_sums = torch.zeros(self.num_locations, dtype=torch.float64)
        self._log_t_voxels = torch.zeros(self.num_locations, dtype=torch.float64)

    def location_index(self) -> torch.Tensor:
        """``[*S]`` long: the location ``l`` of every voxel of the grid, in ``[0, num_locations)``."""
        return self._location

    def _check_grid(self, target_labels: torch.Tensor) -> None:
        if tuple(target_labels.shape[2:]) != self.spatial_shape:
            raise ValueError(
                f"location-wise LEEP needs every case on the grid {self.spatial_shape}, got spatial shape "
                f"{tuple(target_labels.shape[2:])}: the cases are not co-registered."
            )

    def _flat_locations(self, batch: int, device: torch.device) -> torch.Tensor:
        """``[B * prod(S)]`` location of every voxel of a batch, in the row-major order of ``reshape(-1)``."""
        return self._location.to(device).reshape(1, -1).expand(batch, -1).reshape(-1)

    @torch.no_grad()
    def update(
        self, source_probs: torch.Tensor, target_labels: torch.Tensor, mask: torch.Tensor | None = None
    ) -> None:
        """Add the voxels of a batch to the joint of their locations (pass 1).

        Args:
            source_probs: ``[B, Cs, *S]`` source softmax on the common grid.
            target_labels: ``[B, 1, *S]`` integer target class indices in ``[0, Ct)``.
            mask: optional ``[B, 1, *S]`` bool; only voxels where it is true are counted.
        """
        _check_probs_and_labels(source_probs, target_labels, self.num_source_classes)
        self._check_grid(target_labels)
        labels = _labels_as_indices(target_labels, self.num_target_classes).reshape(-1)  # [N]
        probs = source_probs.movedim(1, -1).reshape(-1, self.num_source_classes)  # [N, Cs]
        rows = self._flat_locations(source_probs.shape[0], probs.device) * self.num_target_classes + labels  # [N]
        if mask is not None:
            keep = _check_mask(mask, target_labels).reshape(-1)
            probs, rows = probs[keep], rows[keep]
        counts = self._counts.to(probs.device).view(-1, self.num_source_classes)  # [L * Ct, Cs]
        counts.index_add_(0, rows, probs.to(torch.float64))
        self._counts = counts.view(self.num_locations, self.num_target_classes, self.num_source_classes)
        self._num_voxels = self._num_voxels.to(probs.device) + rows.numel()

    @property
    def num_voxels(self) -> int:
        """Number of voxels :meth:`update` counted so far (summed over ranks after :meth:`all_reduce`)."""
        return int(self._num_voxels.item())

    def conditional(self) -> torch.Tensor:
        """``P_l(y | z)``, float64 ``[L, Ct, Cs]``: each source class column ``z`` of a location sums to 1 over
        ``y`` where the location received its mass, and is 0 where it received none (a location outside every
        mask is all zeros)."""
        marginal_z = self._counts.sum(dim=1, keepdim=True)  # [L, 1, Cs]
        tiny = torch.finfo(torch.float64).tiny
        return torch.where(marginal_z > 0, self._counts / marginal_z.clamp_min(tiny), 0.0)

    @torch.no_grad()
    def transferability(
        self, source_probs: torch.Tensor, target_labels: torch.Tensor, locations: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-voxel ``T(v) = sum_z P_l(v)(y_v | z) p_source(z | v)`` with the conditional of ``v``'s location.

        Args:
            source_probs: ``[B, Cs, *S]`` source softmax on the common grid; with ``locations``, ``[1, Cs, n]``: ``n``
                voxels of the grid (e.g. those of a mask).
            target_labels: ``[B, 1, *S]`` (with ``locations``: ``[1, 1, n]``) integer target class indices in
                ``[0, Ct)``.
            locations: optional ``[n]`` long, the location of each of the ``n`` voxels, e.g.
                ``location_index()[mask[0, 0]]`` for the voxels of ``mask [1, 1, *S]`` in row-major order.

        Returns:
            ``[B, 1, *S]`` (with ``locations``: ``[1, 1, n]``) in ``[0, 1]``, in the dtype of ``source_probs``.
        """
        _check_probs_and_labels(source_probs, target_labels, self.num_source_classes)
        labels = _labels_as_indices(target_labels, self.num_target_classes).reshape(-1)  # [N]
        probs = source_probs.movedim(1, -1).reshape(-1, self.num_source_classes)  # [N, Cs]
        if locations is None:
            self._check_grid(target_labels)
            locations = self._flat_locations(source_probs.shape[0], probs.device)
        elif tuple(locations.shape) != (labels.numel(),):
            raise ValueError(
                f"locations must be [n] with one location per voxel, got shape {tuple(locations.shape)} for "
                f"{labels.numel()} voxels."
            )
        rows = locations.to(probs.device) * self.num_target_classes + labels  # [N]
        conditional = self.conditional().to(device=probs.device, dtype=probs.dtype).view(-1, self.num_source_classes)
        values = torch.zeros(probs.shape[0], dtype=probs.dtype, device=probs.device)  # [N], in chunks: [n, Cs] rows
        for start in range(0, probs.shape[0], 1 << 20):
            part = slice(start, start + (1 << 20))
            values[part] = (conditional[rows[part]] * probs[part]).sum(dim=1)
        return values.view(target_labels.shape).clamp_(0.0, 1.0)

    @torch.no_grad()
    def update_leep(self, transferability: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add ``log T`` of a batch's voxels to the sums of their locations (pass 2).

        Args:
            transferability: ``[B, 1, *S]`` from :meth:`transferability`.
            mask: optional ``[B, 1, *S]`` bool; only voxels where it is true are counted.
        """
        self._check_grid(transferability)
        log_t = transferability.to(torch.float64).clamp_min(torch.finfo(torch.float64).tiny).log().reshape(-1)
        locations = self._flat_locations(transferability.shape[0], log_t.device)
        if mask is not None:
            keep = _check_mask(mask, transferability).reshape(-1)
            log_t, locations = log_t[keep], locations[keep]
        self._log_t_sums = self._log_t_sums.to(log_t.device).index_add_(0, locations, log_t)
        self._log_t_voxels = self._log_t_voxels.to(log_t.device).index_add_(0, locations, torch.ones_like(log_t))

    def location_leep(self) -> torch.Tensor:
        """``LEEP_l``, float64 ``[L]``: the mean ``log T`` (``<= 0``) of each location's voxels over every case
        passed to :meth:`update_leep`; NaN for a location without voxels."""
        voxels = self._log_t_voxels
        return torch.where(voxels > 0, self._log_t_sums / voxels.clamp_min(1.0), torch.nan)

    def leep_map(self) -> torch.Tensor:
        """``[*S]`` float64: ``LEEP_l`` of each voxel's location (NaN where the location had no voxels)."""
        return self.location_leep().cpu()[self._location]

    def all_reduce(self) -> None:
        """Sum the joint counts over ``torch.distributed`` ranks (no-op without); once, after the last
        :meth:`update`."""
        self._counts, self._num_voxels = _sum_over_ranks([self._counts, self._num_voxels])

    def all_reduce_leep(self) -> None:
        """Sum the ``log T`` sums and voxel counts over ranks (no-op without); once, after the last
        :meth:`update_leep`."""
        self._log_t_sums, self._log_t_voxels = _sum_over_ranks([self._log_t_sums, self._log_t_voxels])


def pixel_transferability(
    source_probs: torch.Tensor, target_labels: torch.Tensor, conditional: torch.Tensor
) -> torch.Tensor:
    """Per-voxel transferability ``T(v) = sum_z P(y_v | z) * p_source(z | v)``.

    Args:
        source_probs: ``[B, Cs, *spatial]`` source softmax probabilities.
        target_labels: ``[B, 1, *spatial]`` integer target class indices in ``[0, Ct)``.
        conditional: ``[Ct, Cs]`` empirical ``P(y | z)`` from :meth:`LEEPStatistics.conditional`.

    Returns:
        ``[B, 1, *spatial]`` tensor in ``[0, 1]``, in the dtype of ``source_probs``; high means the source
        model's knowledge predicts the true target label well at that voxel.
    """
    if conditional.ndim != 2:
        raise ValueError(f"conditional must be [Ct, Cs], got shape {tuple(conditional.shape)}.")
    num_target_classes, num_source_classes = conditional.shape
    _check_probs_and_labels(source_probs, target_labels, num_source_classes)
    labels = _labels_as_indices(target_labels, num_target_classes)
    conditional = conditional.to(device=source_probs.device, dtype=source_probs.dtype)
    predicted = torch.einsum("tc,bc...->bt...", conditional, source_probs)  # [B, Ct, *spatial]
    return predicted.gather(1, labels).clamp_(0.0, 1.0)


def leep(source_probs: torch.Tensor, target_labels: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """LEEP score with voxels as samples: the mean of ``log T(v)`` over the (masked) voxels.

    ``P(y | z)`` is pooled over the same voxels; the number of target classes is ``max(label) + 1``.

    Args:
        source_probs: ``[B, Cs, *spatial]`` source softmax probabilities.
        target_labels: ``[B, 1, *spatial]`` integer target class indices (non-negative).
        mask: optional ``[B, 1, *spatial]`` bool selecting the voxels to score.

    Returns:
        A float ``<= 0``; closer to 0 means the source model transfers better to the target labels.
    """
    _check_probs_and_labels(source_probs, target_labels, source_probs.shape[1])
    if mask is not None:
        mask = _check_mask(mask, target_labels)
    num_target_classes = int(target_labels.max().item()) + 1
    stats = LEEPStatistics(max(num_target_classes, 1), source_probs.shape[1])
    stats.update(source_probs, target_labels, mask)
    transferability = pixel_transferability(
        source_probs.to(torch.float64), target_labels, stats.conditional()
    )  # [B, 1, *spatial]
    if mask is not None:
        transferability = transferability[mask]
    log_t = transferability.clamp_min(torch.finfo(torch.float64).tiny).log()
    return log_t.mean().item()


def prior_floor_leep(prior: torch.Tensor) -> float:
    """LEEP of a source that knows nothing (a constant predictor): ``sum_y P(y) log P(y)``, i.e. minus the
    entropy of the target labels.

    Args:
        prior: ``[Ct]`` target class frequencies ``P(y)`` (e.g. :meth:`LEEPStatistics.class_prior`), summing to 1.
    """
    present = prior[prior > 0].to(torch.float64)
    return float((present * present.log()).sum())


def class_information(class_transferability: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """How much the source tells about each target class, ``(T_y - P(y)) / (1 - P(y))`` in ``[0, 1]``.

    0: no more than the prior floor (the source gives no information about ``y``); 1: ``T_y = 1``, every voxel of
    ``y`` is predicted with certainty through ``P(y | z)``. A class with ``P(y) = 1`` (the only class) scores 0.

    Args:
        class_transferability: ``[Ct]`` from :meth:`LEEPStatistics.class_transferability`.
        prior: ``[Ct]`` from :meth:`LEEPStatistics.class_prior`.
    """
    headroom = (1.0 - prior).clamp_min(torch.finfo(torch.float64).tiny)
    return ((class_transferability - prior) / headroom).clamp(0.0, 1.0)


def dead_classes(class_transferability: torch.Tensor, prior: torch.Tensor, margin: float = 0.05) -> list[int]:
    """Target classes the source gives (next to) no information about: :func:`class_information` below ``margin``.

    A class's information ``(T_y - P(y)) / (1 - P(y))`` is the share of the headroom above the prior floor
    ``P(y)`` that the source's predictions reach: 0 for a source that knows nothing about ``y``, 1 for a source
    that predicts ``y`` with certainty. ``margin=0.05`` calls a class dead when the source reaches less than 5% of
    that headroom. Classes absent from the counted voxels (``P(y) = 0``, ``T_y`` NaN) are never dead: there is
    no evidence either way. Class 0 (background) is never reported: where it fills most voxels its ``T_y`` sits
    next to its floor for every source (measured on the FeTS testbed: information 0.004-0.02 for all four
    modality sources, whose fine-tuned Dice ranged from 0.13 to 0.66), so the rule would name it every time.

    Args:
        class_transferability: ``[Ct]`` from :meth:`LEEPStatistics.class_transferability`.
        prior: ``[Ct]`` from :meth:`LEEPStatistics.class_prior`.
        margin: information threshold in ``[0, 1]``.

    Returns:
        The dead classes' indices, ascending.
    """
    if not 0.0 <= margin <= 1.0:
        raise ValueError(f"margin must be in [0, 1], got {margin}")
    present = (prior > 0) & torch.isfinite(class_transferability)
    present[0] = False
    information = class_information(torch.nan_to_num(class_transferability, nan=0.0), prior)
    return [int(i) for i in torch.nonzero(present & (information < margin)).flatten().tolist()]


def class_table(stats: LEEPStatistics, class_names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per target class: ``{"index", "transferability" (T_y), "prior" (P(y), the floor), "information"}``.

    A class absent from the counted voxels has ``transferability`` and ``information`` ``None`` (JSON null).
    """
    transferability, prior = stats.class_transferability(), stats.class_prior()
    information = class_information(torch.nan_to_num(transferability, nan=0.0), prior)
    table = {}
    for index, name in enumerate(class_names):
        present = bool(prior[index] > 0)
        table[str(name)] = {
            "index": index,
            "transferability": float(transferability[index]) if present else None,
            "prior": float(prior[index]),
            "information": float(information[index]) if present else None,
        }
    return table


def dead_class_names(table: dict[str, dict[str, Any]], margin: float) -> list[str]:
    """Names of the dead classes (:func:`dead_classes`) of a :func:`class_table` at ``margin`` (index order)."""
    ordered = sorted(table.items(), key=lambda item: item[1]["index"])
    transferability = torch.tensor(
        [math.nan if v["transferability"] is None else v["transferability"] for _, v in ordered], dtype=torch.float64
    )
    prior = torch.tensor([v["prior"] for _, v in ordered], dtype=torch.float64)
    return [ordered[i][0] for i in dead_classes(transferability, prior, margin)]
