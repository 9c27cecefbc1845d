"""transrisk: transfer risk maps for safe fine-tuning of 3D medical segmentation models.

The bundles under ``bundles/`` point their JSON configs at the modules of this package:

- :mod:`transrisk_components.method.transferability` -- LEEP statistics and per-voxel transferability.
- :mod:`transrisk_components.method.risk` -- transferability -> transfer risk map -> loss weights.
- :mod:`transrisk_components.method.losses` -- the risk-weighted, foreground-normalised segmentation loss.
- :mod:`transrisk_components.data` -- FeTS2021 / iSeg-2019 datalists, input checks, phantoms.
"""

__version__ = "0.1.0"
