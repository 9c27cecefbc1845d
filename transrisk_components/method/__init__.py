"""The paper's method, readable on its own (torch and MONAI only, nothing else of this package).

- :mod:`~transrisk_components.method.transferability` -- LEEP statistics ``P(y, z)``, ``P(y | z)`` and the per-voxel
  transferability ``T(v) = sum_z P(y_v | z) p_source(z | v)``.
- :mod:`~transrisk_components.method.risk` -- transferability -> transfer risk map -> loss weights.
- :mod:`~transrisk_components.method.losses` -- the risk-weighted segmentation loss.
- :mod:`~transrisk_components.method.baselines` -- the comparison losses (L2-SP, top-k Dice-CE).
"""
