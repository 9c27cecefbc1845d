"""The paper's method, readable on its own (torch and MONAI only, nothing else of this package).

- :mod:`~transrisk_components.method.transferability` -- LEEP statistics ``P(y, z)``, ``P(y | z)`` and the per-voxel
  transferability ``T(v) = sum_z P(y_v | z) p_source(z | v)``.
- :mod:`~transrisk_components.method.masks` -- which voxels the statistics and maps cover.
- :mod:`~transrisk_components.method.source_outputs` -- the source states ``z``: softmax classes, or a sigmoid source's
  on/off region combinations.
- :mod:`~transrisk_components.method.risk` -- transferability -> transfer risk map -> loss weights.
- :mod:`~transrisk_components.method.losses` -- the risk-weighted segmentation loss.
- :mod:`~transrisk_components.method.baselines` -- the comparison losses (L2-SP, top-k Dice-CE).
- :mod:`~transrisk_components.method.gbc` -- GBC, a feature-based transferability score for ranking sources.
- :mod:`~transrisk_components.method.head_init` -- a target head from the source head through ``P(z | y)``.

The names below are the method's API: ``from transrisk_components.method import LEEPStatistics, transfer_risk``.
"""

from .baselines import L2SPLoss, TopKDiceCELoss
from .gbc import gaussian_bhattacharyya, gbc_score
from .head_init import leep_head
from .losses import RiskWeightedLoss
from .masks import RISK_MASKS, image_mask
from .risk import RISK_NORMALIZATIONS, WEIGHT_SCHEMES, risk_to_weights, transfer_risk
from .source_outputs import SOURCE_OUTPUTS, num_source_states, sigmoid_states, source_states
from .transferability import (
    LEEPStatistics,
    LocationLEEPStatistics,
    class_information,
    class_table,
    dead_class_names,
    dead_classes,
    leep,
    pixel_transferability,
    prior_floor_leep,
)

__all__ = [
    "L2SPLoss",
    "LEEPStatistics",
    "LocationLEEPStatistics",
    "RISK_MASKS",
    "RISK_NORMALIZATIONS",
    "RiskWeightedLoss",
    "SOURCE_OUTPUTS",
    "TopKDiceCELoss",
    "WEIGHT_SCHEMES",
    "class_information",
    "class_table",
    "dead_class_names",
    "dead_classes",
    "gaussian_bhattacharyya",
    "gbc_score",
    "image_mask",
    "leep",
    "leep_head",
    "num_source_states",
    "pixel_transferability",
    "prior_floor_leep",
    "risk_to_weights",
    "sigmoid_states",
    "source_states",
    "transfer_risk",
]
