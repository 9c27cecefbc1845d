"""The risk stage's options: what the maps and the LEEP statistics are, as one validated value.

:class:`RiskMapOptions` gathers every setting of :class:`~transrisk_components.bundle.stages.risk.RiskStage` that is
a choice rather than an input (the cases, the networks, the transforms, the cache folder are inputs). The bundles
build it from their ``risk#...`` ids (``risk#map_normalization``, ``risk#mask``, ``risk#map``, ``risk#location_patch``,
``risk#probabilities``, ``risk#shuffle``) and the top-level ``seed``, ``source_output`` and ``key_in_ckpt``; a wrong
value stops the run when the object is built, with an error naming the config id and the allowed values. What
fine-tuning does about classes the source gives no information about (``risk#dead_classes``,
``risk#dead_class_margin``) is not an option of the maps: it does not change them, so it is not part of their cache
key.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transrisk_components.bundle.io.config_values import as_bool
from transrisk_components.method.masks import RISK_MASKS
from transrisk_components.method.risk import RISK_NORMALIZATIONS
from transrisk_components.method.source_outputs import SOURCE_OUTPUTS

__all__ = ["DEAD_CLASS_ACTIONS", "PROBABILITY_STORAGE", "RISK_MAPS", "RiskMapOptions"]

#: Storage dtypes of the source probabilities kept between the passes (see :attr:`RiskMapOptions.probabilities`).
PROBABILITY_STORAGE = {"float32": torch.float32, "float16": torch.float16}

#: Where the conditional ``P(y | z)`` is pooled, or the label-only control (see :attr:`RiskMapOptions.map_type`).
RISK_MAPS = ("pooled", "location", "foreground")

#: What fine-tuning does about target classes the source gives no information about (``risk#dead_classes``):
#: ``"warn"`` only warns; ``"reinit"`` re-initialises their output channels after the source weights are loaded;
#: ``"scratch"`` starts from random weights when no foreground class transfers (carried out by
#: :class:`~transrisk_components.bundle.engine.source_weights.SourceWeights`).
DEAD_CLASS_ACTIONS = ("warn", "reinit", "scratch")


@dataclass(frozen=True)
class RiskMapOptions:
    """The options of the risk maps and of the LEEP statistics behind them.

    Attributes:
        normalization: risk normalisation (``risk#map_normalization``), one of
            :data:`~transrisk_components.method.risk.RISK_NORMALIZATIONS`, see
            :func:`~transrisk_components.method.risk.transfer_risk` (``"minmax"`` and ``"neglog_minmax"`` span the
            masked voxels only).
        mask: voxels the LEEP statistics, the reported LEEP and the maps cover (``risk#mask``): ``"nonzero"``
            (default) the voxels where any image channel is nonzero -- the brain, the voxels
            ``NormalizeIntensityd(nonzero=True)`` normalises -- or ``"all"`` (air included). Maps are 0 outside it.
        map_type: (``risk#map``) ``"pooled"`` (default): one ``P(y | z)`` over every voxel of every case, each
            voxel's ``T`` from its own source prediction -- the paper's map, different in every case.
            ``"location"``: ``P_l(y | z)`` and ``LEEP_l`` per location (cube of ``location_patch`` voxels) of the
            common grid, pooled over all cases; a voxel's transferability is its location's ``exp(LEEP_l)`` (the
            geometric mean of ``T`` there), so all cases share one map (up to their masks). With
            ``normalization="complement"`` and the loss scheme ``"inverse"`` at strength 1 the weight is
            ``exp(-LEEP_l)``. Needs co-registered cases. ``"foreground"``: a control, not a transfer risk map: the
            pooled statistics (LEEP, class table) as for ``"pooled"``, but each case's map is 1 on its target-task
            foreground and 0 elsewhere, whatever the normalisation -- a foreground class weight (``1 + strength``
            under the linear scheme) with no transferability in it.
        location_patch: edge in voxels (>= 1) of the locations of ``map_type="location"`` (``risk#location_patch``).
        probabilities: storage dtype of each case's source probabilities on disk between the passes
            (``risk#probabilities``, :data:`PROBABILITY_STORAGE`): ``"float32"`` (default; the maps are exactly those
            of a second source pass) or ``"float16"`` (half the disk; the maps change by up to ~1e-3, so a cache key
            of its own).
        shuffle: ablation (``risk#shuffle``): permute each map's values inside its mask at random, keeping the
            values but not where they are -- the "random map" control of the experiments. Each case has its own
            permutation, seeded by a hash of ``seed`` and its case id. Strings such as ``"false"`` (what ``fire``
            passes from the command line) are read as booleans.
        seed: seed of the permutations when ``shuffle`` is set (the bundle's ``seed``).
        source_output: how the source network's output channels become the source states ``z`` of LEEP
            (``source_output``, :func:`~transrisk_components.method.source_outputs.source_states`): ``"softmax"``
            (default: ``Cs`` classes) or ``"sigmoid"`` (independent regions: their ``2^Cs`` on/off combinations).
        key_in_ckpt: the entry of the source checkpoint dict holding the ``state_dict`` (``key_in_ckpt``; ``None``:
            the file is one).

    Raises:
        ValueError: an option outside its allowed values; the message names the config id and the allowed values.
    """

    normalization: str = "complement"
    mask: str = "nonzero"
    map_type: str = "pooled"
    location_patch: int = 8
    probabilities: str = "float32"
    shuffle: bool = False
    seed: int = 0
    source_output: str = "softmax"
    key_in_ckpt: str | None = None

    def __post_init__(self) -> None:
        # field: (what the message calls it, its config id, allowed values)
        choices = {
            "normalization": ("risk normalization", "risk#map_normalization", RISK_NORMALIZATIONS),
            "mask": ("risk mask", "risk#mask", RISK_MASKS),
            "map_type": ("risk map", "risk#map", RISK_MAPS),
            "probabilities": ("risk#probabilities", "risk#probabilities", tuple(PROBABILITY_STORAGE)),
            "source_output": ("source output", "source_output", SOURCE_OUTPUTS),
        }
        for field, (what, name, allowed) in choices.items():
            value = getattr(self, field)
            if value not in allowed:
                named = "" if what == name else f" ({name})"
                raise ValueError(f"unknown {what} {value!r}{named}; choose one of {allowed}")
        # frozen: the normalised values are set once, here
        object.__setattr__(self, "shuffle", as_bool(self.shuffle, "risk#shuffle"))
        object.__setattr__(self, "location_patch", int(self.location_patch))
        if self.location_patch < 1:
            raise ValueError(f"risk#location_patch must be >= 1 voxel, got {self.location_patch}")

    @property
    def probability_dtype(self) -> torch.dtype:
        """The torch dtype of :attr:`probabilities`."""
        return PROBABILITY_STORAGE[self.probabilities]
