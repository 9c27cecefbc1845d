"""The test suite's experiment grid: the ``tiny`` profile (on a 32^3 FeTS phantom given as the dataset folder)."""

from __future__ import annotations

from transrisk_components.experiments import HEADLINE_METHODS, Profile

#: One scenario, the headline methods, two seeds; 1 epoch per stage and a tiny network.
TINY = Profile(
    scenarios=("fets_t1_to_flair",),
    methods=HEADLINE_METHODS,
    seeds=(0, 1),
    overrides={"source_epochs": 1, "max_epochs": 1, "val_interval": 1, "network_def#init_filters": 4,
               "network_def#blocks_down": [1, 2], "network_def#blocks_up": [1], "patch_size": [16, 16, 16],
               "batch_size": 1, "num_source": 3, "num_target_train": 2, "num_target_val": 1, "num_target_test": 2},
)
