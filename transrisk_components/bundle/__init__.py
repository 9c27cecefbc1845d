"""What the bundles' configs reach where MONAI has no component, in rooms that depend downward only:

- :mod:`~transrisk_components.bundle.io` -- where a run reads and writes (bundle folder, models), fingerprint records,
  the risk maps' manifest, inference inputs and outputs, typed config values;
- :mod:`~transrisk_components.bundle.engine` -- engine adapters: the task-label transform, the risk map's way into
  the loss, source-weight transfer, cache budgets;
- :mod:`~transrisk_components.bundle.handlers` -- resumable checkpoints, learning curves, region metrics and their
  files;
- :mod:`~transrisk_components.bundle.stages` -- the components the stages run: the source model, the risk maps (and
  their export), the ranking of candidate sources;
- :mod:`~transrisk_components.bundle.workflow` -- the stage graph: what a run was asked, every setting checked,
  fingerprints from the resolved config, the plan, the candidates, the selection rule, the transfer report.
"""
