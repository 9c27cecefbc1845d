"""transrisk: transfer risk maps for safe fine-tuning of 3D medical segmentation models.

Layers, lowest first; each imports only from the layers below it (``tests/test_architecture.py`` checks):

- :mod:`transrisk_components.utils` -- atomic file writes, distributed rank queries.
- :mod:`transrisk_components.method` -- the paper: LEEP statistics, pixel transferability, risk, the loss.
- :mod:`transrisk_components.data` -- FeTS2021 / iSeg-2019 datalists, input checks, scenarios, phantoms.
- :mod:`transrisk_components.reporting` -- figures and result tables (matplotlib lives here only).
- :mod:`transrisk_components.bundle` -- what the bundles' configs reach: transforms, engine adapters, stages,
  handlers, metrics, inference.

See ``docs/architecture.md`` for the data flow.
"""

#: The one version of the package and both bundles (their metadata.json agree; see CHANGELOG.md).
__version__ = "0.9.0"
