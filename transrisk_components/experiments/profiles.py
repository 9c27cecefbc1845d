"""Named parts of the grid (profiles): which scenarios, methods and seeds, with how much training, on which phantom.

Each profile's report lies in ``docs/results/<profile>/`` with a ``machine.md`` that records the command, the
machine and the time taken. Profiles that share the quick profile's scenarios, seeds and settings reuse its finished
cells when run in its work folder (same fine-tuning fingerprints), so only their new methods' cells run there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from transrisk_components.experiments.catalogue import (
    CONTROLS,
    DEAD_CLASSES_REINIT,
    DEFAULT_RISK,
    FOREGROUND_MAP,
    LINEAR_STRENGTHS_ABOVE_SWEEP,
    METHODS,
    PLAIN,
    RANDOM_MAP,
    RISK_DICE,
    RISK_SAMPLING,
    SCENARIOS,
    SCRATCH,
    STUDY_VARIANTS,
    VOXEL_MEAN_NORM,
    sweep_id,
)

__all__ = ["FEW_SHOT_CURVE", "HEADLINE_METHODS", "PROFILES", "Profile", "TESTBED_PHANTOMS", "TESTBED_SPLITS"]


@dataclass(frozen=True)
class Profile:
    """Which part of the grid to run, with how much training, on which built-in phantom.

    Attributes:
        scenarios: scenario ids of :data:`~transrisk_components.experiments.catalogue.SCENARIOS`.
        methods: method ids of :data:`~transrisk_components.experiments.catalogue.METHODS`.
        seeds: the ``seed`` of each cell.
        overrides: config ids and values for every cell (training length, patch size, split sizes, ...).
        phantoms: per bundle, the generator options of the phantom the grid runs on when no real dataset folder is
            given (see :func:`transrisk_components.data.phantom.make_phantom`); ``None`` uses the bundle's own
            default phantom.
        ensembles: also evaluate the ensembles of the safe-transfer candidates' cells
            (:mod:`~transrisk_components.experiments.ensembles`) and derive safe transfer with them.
        composites: also evaluate the per-region composite of the candidates' cells
            (:mod:`~transrisk_components.experiments.composites`; exploratory) and derive safe transfer with it.
    """

    scenarios: Sequence[str]
    methods: Sequence[str]
    seeds: Sequence[int]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    phantoms: Mapping[str, Mapping[str, Any]] | None = None
    ensembles: bool = False
    composites: bool = False


HEADLINE_METHODS = (SCRATCH, PLAIN, DEFAULT_RISK)
#: The few-shot curve: number of target training cases -> scenario (T1 source, T1ce multiclass target).
FEW_SHOT_CURVE = {2: "fets_fewshot_2", 4: "fets_t1_to_t1ce", 8: "fets_fewshot_8"}

#: The evidence testbed: enough phantom subjects for 16 test, 4 validation, 16 source and up to 8 training cases
#: per scenario (a cross-modality source shares the target's subjects, so they must not overlap; 24 per
#: institution for the cross-site scenario), and a bounded source set so that a source model costs the same in
#: every scenario.
TESTBED_PHANTOMS = {"fets": {"subjects": 72, "institutions": 3}, "iseg": {"subjects": 40, "labelled": 40}}
TESTBED_SPLITS = {"num_target_train": 4, "num_target_val": 4, "num_target_test": 16, "num_source": 16}

PROFILES: dict[str, Profile] = {
    "quick": Profile(  # short training, 32^3 patches, the headline methods, one scenario of each kind
        scenarios=("fets_t1_to_t1ce", "fets_ed_to_et", "fets_fewshot_2", "fets_fewshot_8", "fets_cross_site",
                   "iseg_t1_to_t2"),
        methods=HEADLINE_METHODS,
        seeds=(0, 1, 2, 3, 4),
        overrides={**TESTBED_SPLITS, "source_epochs": 10, "max_epochs": 40, "val_interval": 10, "patch_size": [32, 32, 32]},
        phantoms=TESTBED_PHANTOMS,
    ),
    "testbed": Profile(  # from scratch on 16 T1ce cases, quick settings: the tumour regions must reach Dice >= 0.5
        scenarios=("fets_t1ce_learnability",),
        methods=(SCRATCH,),
        seeds=(0, 1, 2),
        overrides={**TESTBED_SPLITS, "num_source": 2, "source_epochs": 1, "max_epochs": 20, "val_interval": 10,
                   "patch_size": [32, 32, 32]},
        phantoms=TESTBED_PHANTOMS,
    ),
    "full": Profile(  # every scenario and method at the bundles' own training length; meant for a GPU
        scenarios=tuple(name for name, s in SCENARIOS.items() if s.kind != "testbed check"),
        methods=tuple(METHODS),
        seeds=(0, 1, 2, 3, 4),
        overrides={"num_target_val": 4, "num_target_test": 16},
        phantoms=TESTBED_PHANTOMS,
    ),
}

# The quick profile at 15 seeds, for CIs about sqrt(3) times tighter: 270 cells, meant for a GPU machine with
# --workers.
PROFILES["power"] = replace(PROFILES["quick"], seeds=tuple(range(15)))

# Safe transfer: the dead-class action next to the headline methods, where the T1 source cannot see the enhancing
# rim (T1 -> T1ce, with 4 and with 2 target training cases).
PROFILES["safe"] = replace(
    PROFILES["quick"], scenarios=("fets_t1_to_t1ce", "fets_fewshot_2"), methods=(*HEADLINE_METHODS, DEAD_CLASSES_REINIT)
)

# Controls on the quick profile's scenarios: the random-map ablation permutes each case's risk map inside the head,
# so the loss weights keep their distribution (and the mean weight, hence the loss scale) but lose their placement;
# the foreground-map ablation puts the default's top weight on every target-foreground voxel and 1 elsewhere, so it
# asks whether a class weight does what the map does; and the voxel-mean CE normalisation in place of the paper's
# per-case foreground size.
PROFILES["control"] = replace(
    PROFILES["quick"], methods=(*HEADLINE_METHODS, RANDOM_MAP, FOREGROUND_MAP, VOXEL_MEAN_NORM)
)

# The variant study, on validation cases only (``study.choose_default`` states the selection rule; the test cases
# are reported but do not enter the choice): the headline methods and every risk-map variant on three FeTS
# scenarios (cross-modality with a class invisible to the source, cross-task, and 2-shot), 5 seeds, the quick
# profile's training settings and testbed phantom; meant for a GPU machine with --workers.
PROFILES["study"] = replace(
    PROFILES["quick"],
    scenarios=("fets_t1_to_t1ce", "fets_ed_to_et", "fets_fewshot_2"),
    methods=(*HEADLINE_METHODS, RANDOM_MAP, *STUDY_VARIANTS),
)

# The selection rule again around the default (linear s=8, per-case foreground normalisation), on the study's
# scenarios and seeds: the linear strengths above the default's, and the two variants that stack on the default
# (risk-weighted Dice and risk-guided sampling act on top of it).
PROFILES["refine"] = replace(
    PROFILES["study"],
    methods=(*HEADLINE_METHODS, RISK_DICE, RISK_SAMPLING, *(sweep_id("linear", s) for s in LINEAR_STRENGTHS_ABOVE_SWEEP)),
)

# Does longer fine-tuning shrink the run-to-run spread? The quick profile's scenarios, seeds, source models and
# phantoms, with plain fine-tuning and the default only, fine-tuned 4 times as long (160 epochs, validation every
# 20). Its cells share folder names with quick's, so it needs a work folder of its own. Copying a quick work
# folder's ``data`` there skips generating the phantom (its options are checked); the source models are trained
# again, since their fingerprint records the dataset folder, and the same seeds and thread count give the same
# weights.
PROFILES["long"] = replace(
    PROFILES["quick"],
    methods=(PLAIN, DEFAULT_RISK),
    overrides={**PROFILES["quick"].overrides, "max_epochs": 160, "val_interval": 20},
)
# The long profile's three FeTS scenarios of the study at 10 seeds; in the long profile's work folder only seeds
# 5 to 9 run.
PROFILES["long10"] = replace(PROFILES["long"], scenarios=PROFILES["study"].scenarios, seeds=tuple(range(10)))
# The long profile at 15 seeds, all six scenarios (180 cells), meant for a GPU machine with --workers; run from
# scratch on one machine, so that every seed's source model and cells come from the same hardware.
PROFILES["long15"] = replace(PROFILES["long"], seeds=tuple(range(15)))
# The foreground-map control at the long profile's budget: in the long profile's work folder only its cells run.
PROFILES["long_control"] = replace(PROFILES["long"], methods=(PLAIN, DEFAULT_RISK, FOREGROUND_MAP))

# The confirmatory study of safe transfer (choose among candidate starts on validation, bundle/selection.py): the
# quick profile's settings on seeds no other profile uses (100-114), the candidates the bundles train by default.
# docs/results/confirm/README.md names the commit of the rule and the racing schedule it tests. The scenarios that
# test the promise hardest come first: T1 -> T1ce (a class the source cannot see), ED -> ET (another task), 2-shot,
# and iSeg T1 -> T2; 180 cells.
PROFILES["confirm"] = replace(
    PROFILES["quick"],
    scenarios=("fets_t1_to_t1ce", "fets_ed_to_et", "fets_fewshot_2", "iseg_t1_to_t2"),
    seeds=tuple(range(100, 115)),
)

# A source trained on all four FeTS modalities (4 input channels), transferred to a one-modality target (T1ce, with
# the source's first convolution reduced to the T1ce filters) and to FLAIR on another institution; safe transfer
# over the headline methods, at the quick profile's settings and seeds.
PROFILES["multimodal"] = replace(PROFILES["quick"], scenarios=("fets_all_to_t1ce", "fets_all_cross_site"))

# The second pre-registered study (#35; its rule and hypotheses: docs/results/confirm2/README.md, committed before any
# of its cells ran): every scenario of the quick profile, fresh seeds 200-214, the candidates of safe transfer, the
# restarts of the equal-compute controls (plain x3, risk map x3) and the candidates' ensembles, at the quick profile's
# 40 fine-tuning epochs and at 160 (validation every 20, as the long profile). Each profile is 630 cells.
#: The commit that registered the study's rule: its files (``experiments.hypotheses.REGISTERED_FILES``) as they stand
#: there are the rule; each ``machine.md`` of the ``confirm2_*`` profiles says whether a run used them.
CONFIRM2_REGISTRATION: str | None = "4c2a167c1939719d2f443982b196d718ac714909"
CONTROL_RESTARTS = tuple(m for restarts in CONTROLS.values() for m in restarts if m not in HEADLINE_METHODS)
# The composite (safe#composites) was added to these profiles after registration, as an exploratory method beside the
# hypotheses (docs/results/confirm2/README.md, "Amendment"): its rows are evaluated from the candidates' cells.
PROFILES["confirm2_40"] = replace(PROFILES["quick"], methods=(*HEADLINE_METHODS, *CONTROL_RESTARTS), seeds=tuple(range(200, 215)),
                                  ensembles=True, composites=True)
PROFILES["confirm2_160"] = replace(PROFILES["confirm2_40"], overrides={**PROFILES["long"].overrides})
