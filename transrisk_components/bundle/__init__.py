"""What the bundles' configs reach through their ``_target_``s: the MONAI / Ignite plumbing around the method.

- :mod:`~transrisk_components.bundle.paths`, :mod:`~transrisk_components.bundle.config_values` -- config helpers.
- :mod:`~transrisk_components.bundle.transforms` -- ``TaskLabelsd``, the one transform MONAI lacks (the rest of
  the pipeline, the network and the trainers are MONAI's, spelled out in the configs).
- :mod:`~transrisk_components.bundle.engine` -- the risk map's way into the loss, source-weight transfer (``SourceWeights``).
- :mod:`~transrisk_components.bundle.stages` -- the one-off stages before fine-tuning (source model, risk maps).
- :mod:`~transrisk_components.bundle.handlers` -- checkpoints, learning curves, metric reports.
- :mod:`~transrisk_components.bundle.metrics` -- evaluation regions and per-case metrics.
- :mod:`~transrisk_components.bundle.inference`, :mod:`~transrisk_components.bundle.risk_export` -- outputs for users.
"""
