"""The paper's comparison as a grid of bundle runs: scenarios x methods x seeds.

Every cell runs the bundles' own run ids through :class:`monai.bundle.ConfigWorkflow` -- ``training`` on
``train.json``, then ``evaluating`` on ``train.json + evaluate.json`` once on the target-validation cases and once on
the target-test cases -- with config overrides that select the scenario, the method and the seed. There is no
second training loop here.

Layout of an experiment folder::

    sources/<scenario>/seed<k>/source.pt         source model, shared by every method of that scenario and seed
    risk_maps/<scenario>/seed<k>/<key>/          risk-map cache (the key covers the options)
    cells/<scenario>/<method>/seed<k>/           the cell's checkpoints, splits, metrics and result.json
    results.csv, table.md, figures/              written by :mod:`transrisk_components.reporting.results`

A cell whose ``result.json`` exists is done and skipped -- after checking that the fine-tuning fingerprint it
records (the bundle's ``fingerprint#finetune``: settings, split cases, input files, source checkpoint) is the one
the cell resolves to now; a cell made with other settings (e.g. before a bundle default changed) stops the grid
with the differences. A killed grid continues where it stopped; a cell killed mid-training resumes from its last
epoch checkpoint.

Each cell is its own bundle root (``bundle_root`` is the cell folder), so the bundle's run lock guards the cell's
outputs. :func:`run_grid_in_parallel` runs independent cells side by side (a GPU machine's cores): first one cell
per source model, so that each source is trained once, then one worker per scenario and seed, so that a risk-map
cache is only ever written by one process.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from transrisk_components.bundle.fingerprint import StageFingerprint, StaleOutputError
from transrisk_components.utils.io import atomic_write_text, file_sha256

__all__ = ["Cell", "DEAD_CLASSES_REINIT", "DEFAULT_RISK", "DEFAULT_SWEEP_POINT", "FEW_SHOT_CURVE", "FOREGROUND_MAP", "HEADLINE_METHODS", "LINEAR_STRENGTHS_ABOVE_SWEEP", "LOCATION_LEEP", "METHODS", "Method", "NEGLOG_POWER10", "PLAIN", "PROFILES", "Profile", "RANKING", "RISK_DICE", "RISK_SAMPLING", "RankingStudy", "SAFE", "SAFE_CANDIDATES", "SAFE_RACED", "SAFE_RUNGS", "BETTER_OF_PLAIN_AND_SCRATCH", "SCENARIOS", "SCRATCH", "STUDY_VARIANTS", "SWEEP_STRENGTHS", "VOXEL_MEAN_NORM", "GridScenario", "choose_default", "export_risk_overlays", "finetune_fingerprint", "grid", "parallel_schedule", "prepare_phantoms", "run_cell", "run_grid_in_parallel", "run_ranking_study", "safe_transfer_rows", "selection_scores", "source_checkpoint"]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
PLAIN = "plain fine-tuning"
SCRATCH = "from scratch"
DEFAULT_RISK = "risk-weighted (default)"
DEAD_CLASSES_REINIT = "risk-weighted, dead classes re-initialised"
NEGLOG_POWER10 = "-log T min-max, 10^r, CE over foreground + Dice"
LOCATION_LEEP = "location-wise LEEP, exp(-LEEP)"
RISK_DICE = "risk-weighted Dice"
RISK_SAMPLING = "risk-guided sampling"
VOXEL_MEAN_NORM = "risk map, voxel-mean norm."
#: Control: the default's loss with a map that is 1 on the target foreground -- a class weight, no transferability.
FOREGROUND_MAP = "ablation: foreground map"
#: Strengths of the sweep, for the linear and the exponential scheme.
SWEEP_STRENGTHS = (0.0, 1.0, 2.0, 4.0, 8.0)
#: Linear strengths above the sweep's top, added when the study picked that top (linear s=8.0) as the default.
LINEAR_STRENGTHS_ABOVE_SWEEP = (16.0, 32.0)


@dataclass(frozen=True)
class GridScenario:
    """A transfer setting: which bundle, and the config overrides that pick source and target.

    ``source_from`` names another scenario whose source model this one reuses (same source modality, task and
    source cases); the source stage's fingerprint still checks that they match.
    """

    name: str
    bundle: str
    kind: str
    overrides: Mapping[str, Any]
    source_from: str | None = None


@dataclass(frozen=True)
class Method:
    """A fine-tuning method: config overrides on top of the bundle's ``train.json``.

    ``bundles`` names the bundles the method applies to (``None``: all); :func:`grid` leaves out the other cells
    (the location-wise map needs co-registered cases, which iSeg's are not).
    """

    name: str
    overrides: Mapping[str, Any]
    group: str = "main"  # main, safe (dead-class action), variant (other risk-map settings), sweep, ablation, alternative
    bundles: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    scenario: GridScenario
    method: Method
    seed: int

    def folder(self, root: Path) -> Path:
        """``<root>/cells/<scenario>/<method slug>/seed<k>``."""
        return root / "cells" / self.scenario.name / _slug(self.method.name) / f"seed{self.seed}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")


def _loss_override(loss: Mapping[str, Any]) -> dict[str, Any]:
    """Override of the ``loss`` id with a plain (map-free) loss wrapped as the trainer expects."""
    return {"risk#enabled": False, "loss": {"_target_": "transrisk_components.bundle.engine.TransferLoss", "loss": dict(loss)}}


_DICE_CE = {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True}

SCENARIOS: dict[str, GridScenario] = {
    s.name: s
    for s in [
        # The enhancing rim is invisible on T1 and bright on T1ce: a target class the source cannot see.
        GridScenario("fets_t1_to_t1ce", "fets", "cross-modality", {"source_modality": "t1", "target_modality": "t1ce"}),
        GridScenario("fets_t1_to_flair", "fets", "cross-modality", {"source_modality": "t1", "target_modality": "flair"}),
        GridScenario("fets_t1ce_to_t2", "fets", "cross-modality", {"source_modality": "t1ce", "target_modality": "t2"}),
        GridScenario("iseg_t1_to_t2", "iseg", "cross-modality", {"source_modality": "T1", "target_modality": "T2"}),
        # nnU-Net-style binary tasks of the authors' group: same modality, another tumour label.
        GridScenario(
            "fets_ed_to_et",
            "fets",
            "cross-task",
            {"source_modality": "t1ce", "target_modality": "t1ce", "source_task": "ED", "target_task": "ET"},
        ),
        GridScenario(
            "fets_wt_to_tc",
            "fets",
            "cross-task",
            {"source_modality": "flair", "target_modality": "flair", "source_task": "WT", "target_task": "TC"},
        ),
        GridScenario(
            "iseg_wm_to_gm",
            "iseg",
            "cross-task",
            {"source_modality": "T2", "target_modality": "T2", "source_task": "WM", "target_task": "GM"},
        ),
        *[
            GridScenario(
                f"fets_fewshot_{n}",
                "fets",
                "few-shot",
                {"source_modality": "t1", "target_modality": "t1ce", "num_target_train": n},
                source_from="fets_t1_to_t1ce",
            )
            for n in (2, 8)  # 4 target training cases: fets_t1_to_t1ce
        ],
        # Testbed check, not a transfer setting: is the phantom's tumour learnable at the quick budget?
        GridScenario(
            "fets_t1ce_learnability",
            "fets",
            "testbed check",
            {"source_modality": "t1ce", "target_modality": "t1ce", "num_target_train": 16},
        ),
        GridScenario(
            "fets_cross_site",
            "fets",
            "cross-site",
            {
                "source_modality": "flair",
                "target_modality": "flair",
                "partition_csv": "partitioning_1.csv",
                "source_partitions": ["01", "02"],
                "target_partitions": ["03"],
            },
        ),
    ]
}

METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method(SCRATCH, {"target_init": "random", "risk#enabled": False}),
        Method(PLAIN, {"risk#enabled": False}),
        Method(DEFAULT_RISK, {}),
        Method(DEAD_CLASSES_REINIT, {"risk#dead_classes": "reinit"}, "safe"),
        Method(
            "ablation: uniform map, foreground norm.",
            {"risk#scheme": "uniform", "risk#loss_normalization": "foreground"},
            "ablation",
        ),
        Method("ablation: random map", {"risk#shuffle": True}, "ablation"),
        Method(FOREGROUND_MAP, {"risk#map": "foreground"}, "ablation"),
        # The bundles' default until 0.4.0: the weighted CE divided by the patch's voxel count.
        Method(VOXEL_MEAN_NORM, {"risk#loss_normalization": "voxels"}, "variant"),
        Method(
            NEGLOG_POWER10,
            {
                "risk#normalization": "neglog_minmax",
                "risk#scheme": "power10",
                "risk#strength": 1.0,
                "risk#ce_voxels": "foreground",
                "risk#loss_normalization": "foreground",
            },
            "variant",
        ),
        Method(
            LOCATION_LEEP,
            {"risk#map": "location", "risk#normalization": "complement", "risk#scheme": "inverse", "risk#strength": 1.0},
            "variant",
            bundles=("fets",),
        ),
        Method(RISK_DICE, {"risk#dice": "weighted"}, "variant"),
        Method(RISK_SAMPLING, {"risk#sampling": "risk"}, "variant"),
        *[
            Method(f"sweep: {scheme} s={s}", {"risk#scheme": scheme, "risk#strength": s}, "sweep")
            for scheme in ("linear", "exponential")
            for s in SWEEP_STRENGTHS
        ],
        *[
            Method(f"sweep: linear s={s}", {"risk#scheme": "linear", "risk#strength": s}, "sweep")
            for s in LINEAR_STRENGTHS_ABOVE_SWEEP
        ],
        Method(
            "L2-SP",
            _loss_override(
                {
                    "_target_": "transrisk_components.method.baselines.L2SPLoss",
                    "loss": _DICE_CE,
                    "network": "@network",
                    "source_ckpt": "@source_ckpt",
                }
            ),
            "alternative",
        ),
        Method(
            "focal loss",
            _loss_override({"_target_": "DiceFocalLoss", "to_onehot_y": True, "softmax": True, "gamma": 2.0}),
            "alternative",
        ),
        Method("top-k CE", _loss_override({"_target_": "transrisk_components.method.baselines.TopKDiceCELoss"}), "alternative"),
    ]
}


@dataclass(frozen=True)
class Profile:
    """Which part of the grid to run, with how much training, on which built-in phantom.

    ``phantoms`` gives, per bundle, the generator options of the phantom the grid runs on when no real dataset
    folder is given (see :func:`transrisk_components.data.phantom.make_phantom`); ``None`` uses the bundle's own
    default phantom.
    """

    scenarios: Sequence[str]
    methods: Sequence[str]
    seeds: Sequence[int]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    phantoms: Mapping[str, Mapping[str, Any]] | None = None


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
    "tiny": Profile(  # the test suite's grid (on a 32^3 phantom given as --fets_dir): 1 epoch, a tiny network
        scenarios=("fets_t1_to_flair",),
        methods=HEADLINE_METHODS,
        seeds=(0, 1),
        overrides={"source_epochs": 1, "max_epochs": 1, "val_interval": 1, "network_def#init_filters": 4,
                   "network_def#blocks_down": [1, 2], "network_def#blocks_up": [1], "patch_size": [16, 16, 16],
                   "batch_size": 1, "num_source": 3, "num_target_train": 2, "num_target_val": 1, "num_target_test": 2},
    ),
}


#: The sweep point that is the bundles' default (``risk#scheme``, ``risk#strength``).
DEFAULT_SWEEP_POINT = "sweep: linear s=8.0"
#: The risk-map variants the study compares with the default: every ``variant`` and the strength sweep, less the
#: sweep points that repeat another candidate (the default's; exponential s=0.0 is linear s=0.0, weights 1
#: everywhere). The committed study (``docs/results/study``) ran when the default was exponential s=2.0 (with the
#: per-case foreground normalisation), which it lists as the default, and before the linear strengths above 8 were
#: added; it picked linear s=8.0. The ``refine`` profile tried those strengths afterwards.
STUDY_VARIANTS = tuple(
    m for m in METHODS
    if METHODS[m].group in ("variant", "sweep") and m not in (DEFAULT_SWEEP_POINT, "sweep: exponential s=0.0")
)

# The quick profile at 15 seeds, for CIs about sqrt(3) times tighter: 270 cells, meant for a GPU machine with
# --workers (4.7 minutes on one H200 with 15 workers, docs/results/power/machine.md; about 2 h 15 min on 2 CPU
# cores, going by quick's 44 minutes for 90 cells).
PROFILES["power"] = replace(PROFILES["quick"], seeds=tuple(range(15)))

# Safe transfer (issue #14): the dead-class action next to the headline methods, where the T1 source cannot see
# the enhancing rim (T1 -> T1ce, with 4 and with 2 target training cases); the headline cells are the quick
# profile's, so with the same work folder only the action's cells run.
PROFILES["safe"] = Profile(
    scenarios=("fets_t1_to_t1ce", "fets_fewshot_2"),
    methods=(*HEADLINE_METHODS, DEAD_CLASSES_REINIT),
    seeds=PROFILES["quick"].seeds,
    overrides=PROFILES["quick"].overrides,
    phantoms=PROFILES["quick"].phantoms,
)

# Controls on the quick profile's scenarios: the random-map ablation permutes each case's risk map inside the head,
# so the loss weights keep their distribution (and the mean weight, hence the loss scale) but lose their placement;
# the foreground-map ablation puts the default's top weight (9) on every target-foreground voxel and 1 elsewhere,
# so it asks whether a class weight does what the map does; and the voxel-mean CE normalisation (the default until
# bundle version 0.4.0) in place of the paper's per-case foreground size. In the quick profile's work folder only
# these three methods' cells run (90 cells; 21.5 + 13.1 minutes on 2 CPU cores, docs/results/control).
PROFILES["control"] = Profile(
    scenarios=PROFILES["quick"].scenarios,
    methods=(*HEADLINE_METHODS, "ablation: random map", FOREGROUND_MAP, VOXEL_MEAN_NORM),
    seeds=PROFILES["quick"].seeds,
    overrides=PROFILES["quick"].overrides,
    phantoms=PROFILES["quick"].phantoms,
)

# The variant study, on validation cases only (``choose_default`` states the selection rule; the test cases are
# reported but do not enter the choice): the headline methods and every risk-map variant on three FeTS scenarios
# (cross-modality with a class invisible to the source, cross-task, and 2-shot), 5 seeds, the quick profile's
# training settings and testbed phantom. Size when committed: 10 source models (the 2-shot scenario borrows
# T1 -> T1ce's) and 15 x 17 = 255 fine-tuning cells, 4.1 minutes on one H200 with ``--workers 15``
# (docs/results/study/machine.md); about 2 h 50 min on 2 CPU cores, going by the 2-seed run's 69 minutes for
# 102 cells. The two linear strengths added since make it 285 cells.
PROFILES["study"] = Profile(
    scenarios=("fets_t1_to_t1ce", "fets_ed_to_et", "fets_fewshot_2"),
    methods=(*HEADLINE_METHODS, "ablation: random map", *STUDY_VARIANTS),
    seeds=(0, 1, 2, 3, 4),
    overrides=PROFILES["quick"].overrides,
    phantoms=PROFILES["quick"].phantoms,
)

# Another round of the selection rule (its fourth application, see the README), at the 0.4.0 default (linear
# s=8.0, per-case foreground normalisation), on the study's scenarios and seeds: the linear strengths above the
# first sweep's top, and the two variants that stack on the default (risk-weighted Dice and risk-guided sampling
# now act on top of linear s=8.0). The headline cells are the quick profile's, so in quick's work folder only the
# 60 new cells run (docs/results/refine: the default stays).
PROFILES["refine"] = replace(
    PROFILES["study"],
    methods=(*HEADLINE_METHODS, RISK_DICE, RISK_SAMPLING,
             *(f"sweep: linear s={s}" for s in LINEAR_STRENGTHS_ABOVE_SWEEP)),
)

# Does longer fine-tuning shrink the run-to-run spread? The quick profile's scenarios, seeds, source models and
# phantoms, with plain fine-tuning and the default only, fine-tuned 4 times as long (160 epochs, validation every
# 20). Its cells share folder names with quick's, so it needs a work folder of its own. Copying a quick work
# folder's ``data`` there skips generating the phantom (its options are checked); the source models are trained
# again, since their fingerprint records the dataset folder, and the same seeds and thread count give the same
# weights (docs/results/long).
PROFILES["long"] = replace(
    PROFILES["quick"],
    methods=(PLAIN, DEFAULT_RISK),
    overrides={**PROFILES["quick"].overrides, "max_epochs": 160, "val_interval": 20},
)
# The long profile's three FeTS scenarios of the study at 10 seeds; in the long profile's work folder only seeds
# 5 to 9 run (30 cells).
PROFILES["long10"] = replace(PROFILES["long"], scenarios=PROFILES["study"].scenarios, seeds=tuple(range(10)))
# The long profile at 15 seeds, all six scenarios (180 cells), meant for a GPU machine with --workers; run from
# scratch on one machine, so that every seed's source model and cells come from the same hardware.
PROFILES["long15"] = replace(PROFILES["long"], seeds=tuple(range(15)))
# The foreground-map control at the long profile's budget: in the long profile's work folder only its 30 cells run.
PROFILES["long_control"] = replace(PROFILES["long"], methods=(PLAIN, DEFAULT_RISK, FOREGROUND_MAP))


# The confirmatory study of safe transfer (choose among candidate starts on validation, bundle/selection.py): the
# quick profile's settings on seeds never used before (100-114), the candidates the bundles train by default. The
# rule and the racing schedule were committed before this profile first ran (docs/results/confirm/README.md names
# the commit). On 2 CPU cores the scenarios that test the promise hardest come first: T1 -> T1ce (a class the
# source cannot see), ED -> ET (another task), 2-shot, and iSeg T1 -> T2 (where the default is firmly below plain
# fine-tuning at 160 epochs); 180 cells.
PROFILES["confirm"] = replace(
    PROFILES["quick"],
    scenarios=("fets_t1_to_t1ce", "fets_ed_to_et", "fets_fewshot_2", "iseg_t1_to_t2"),
    seeds=tuple(range(100, 115)),
)

#: The candidates of safe transfer in the bundles' default order (the selection rule's tie order).
SAFE_CANDIDATES = (DEFAULT_RISK, PLAIN, SCRATCH)
#: Racing rungs as fractions of the fine-tuning length (the bundles' ``safe#rungs``).
SAFE_RUNGS = (0.25, 0.5)
SAFE = "safe transfer"
SAFE_RACED = "safe transfer, raced"
#: Per seed, the better of plain fine-tuning and training from scratch by mean *test* Dice: an oracle no user has,
#: the bar that safe transfer promises not to fall below.
BETTER_OF_PLAIN_AND_SCRATCH = "better of plain and scratch (test oracle)"


def safe_transfer_rows(
    rows: Sequence[Mapping[str, Any]], max_epochs: int, val_interval: int,
    candidates: Sequence[str] = SAFE_CANDIDATES, rungs: Sequence[float] = SAFE_RUNGS,
) -> list[dict[str, Any]]:
    """Rows of the methods that safe transfer derives from the candidates' cells, per (scenario, seed).

    - :data:`SAFE`: the candidate :func:`~transrisk_components.bundle.selection.choose_candidate` picks from the
      candidates' per-case validation Dice (the bundles' rule, validation only);
    - :data:`SAFE_RACED`: the same rule among the candidates that :func:`~transrisk_components.bundle.selection.race`
      lets finish, replayed on the candidates' validation curves (a resumed run continues as the uninterrupted one
      did, so the replay is the race's outcome); its ``cost`` is the epochs trained over one full run's;
    - :data:`BETTER_OF_PLAIN_AND_SCRATCH`: per seed, whichever of plain fine-tuning and scratch has the higher mean
      test Dice.

    Each derived row is a copy of the chosen cell's row (its test Dice and test cases) with ``method`` replaced and
    ``chosen`` (the candidate) and ``cost`` added. A (scenario, seed) without every candidate's cell is left out.
    """
    from transrisk_components.bundle.selection import choose_candidate, race, rung_epochs

    cells = {(r["scenario"], int(r["seed"]), r["method"]): r for r in rows}
    derived = []
    for scenario, seed in dict.fromkeys((r["scenario"], int(r["seed"])) for r in rows):
        found = {m: cells.get((scenario, seed, m)) for m in candidates}
        if any(row is None for row in found.values()):
            continue
        validation = {m: row["val_cases"] for m, row in found.items()}
        choice = choose_candidate(validation).chosen
        curves = {m: {int(e): v for e, v in row["val_curve"].items()} for m, row in found.items()}
        outcome = race(curves, rung_epochs(rungs, max_epochs, val_interval), max_epochs)
        raced = choose_candidate({m: validation[m] for m in outcome.finished}).chosen
        oracle = max((PLAIN, SCRATCH), key=lambda m: (cells[(scenario, seed, m)]["test_dice"], m == PLAIN))
        for method, chosen, cost in ((SAFE, choice, float(len(candidates))), (SAFE_RACED, raced, outcome.cost),
                                     (BETTER_OF_PLAIN_AND_SCRATCH, oracle, 2.0)):
            derived.append({**cells[(scenario, seed, chosen)], "method": method, "group": "derived", "chosen": chosen,
                            "cost": cost})
    return derived


def grid(profile: Profile) -> list[Cell]:
    """The cells of ``profile`` in run order (scenario, seed, method), so a source model is trained once; a method
    is left out of the scenarios whose bundle it does not apply to (:attr:`Method.bundles`)."""
    unknown = [s for s in profile.scenarios if s not in SCENARIOS] + [m for m in profile.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown scenarios/methods {unknown}; known: {sorted(SCENARIOS)} / {sorted(METHODS)}")
    return [
        Cell(SCENARIOS[s], METHODS[m], seed)
        for s in profile.scenarios
        for seed in profile.seeds
        for m in profile.methods
        if METHODS[m].bundles is None or SCENARIOS[s].bundle in METHODS[m].bundles
    ]


def prepare_phantoms(profile: Profile, root: Path, dataset_dirs: Mapping[str, str | None]) -> dict[str, str | None]:
    """Generate the profile's phantoms under ``<root>/data/<bundle>`` for the bundles without a real dataset folder.

    A phantom already there is reused only when its generator options are the profile's (the options are kept in
    ``<root>/data/<bundle>/options.json`` with the dataset root's name); otherwise it is generated again. Real dataset folders pass through.

    Returns:
        ``dataset_dirs`` with the phantom roots filled in (``None`` still means the bundle's default phantom).
    """
    from transrisk_components.data.phantom import make_phantom

    resolved = dict(dataset_dirs)
    bundles = {SCENARIOS[s].bundle for s in profile.scenarios}
    for bundle in sorted(bundles):
        if resolved.get(bundle) or not profile.phantoms or bundle not in profile.phantoms:
            continue
        options = dict(profile.phantoms[bundle])
        folder = root / "data" / bundle
        record_path = folder / "options.json"
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        if record.get("options") != options or not (folder / record.get("root", "?")).is_dir():
            logger.warning("generating the %s testbed phantom in %s: %s", bundle, folder, options)
            made = Path(make_phantom(bundle, folder, **options))
            record = {"options": options, "root": made.name}
            atomic_write_text(record_path, json.dumps(record, sort_keys=True) + "\n")
        resolved[bundle] = str(folder / record["root"])
    return resolved


def bundle_config(bundle: str, name: str) -> str:
    """Path of ``bundles/<bundle>/configs/<name>.json`` in this repository."""
    return str(REPO_ROOT / "bundles" / bundle / "configs" / f"{name}.json")


def source_checkpoint(cell: Cell, root: Path) -> Path:
    """``<root>/sources/<scenario, or the one it takes its source from>/seed<k>/source.pt``."""
    return root / "sources" / (cell.scenario.source_from or cell.scenario.name) / f"seed{cell.seed}" / "source.pt"


def cell_overrides(cell: Cell, root: Path, profile: Profile, dataset_dirs: Mapping[str, str | None]) -> dict[str, Any]:
    """Every config override of one cell: outputs under ``root``, scenario, method, seed, profile settings."""
    folder = cell.folder(root)
    shared = f"{cell.scenario.name}/seed{cell.seed}"
    overrides: dict[str, Any] = {
        "bundle_root": str(folder),  # the run lock and the clean-up of killed writes cover this cell alone
        "seed": cell.seed,
        "ckpt_dir": str(folder / "models"),
        "output_dir": str(folder / "eval"),
        "log_dir": str(folder / "runs"),
        "source_ckpt": str(source_checkpoint(cell, root)),
        "risk_dir": str(root / "risk_maps" / shared),
        "progress": False,
        **profile.overrides,
        **cell.scenario.overrides,
        **cell.method.overrides,
    }
    if dataset_dirs.get(cell.scenario.bundle):
        overrides["dataset_dir"] = dataset_dirs[cell.scenario.bundle]
    return overrides


def _workflow(config_files: list[str], run_id: str, overrides: Mapping[str, Any]) -> Any:
    from monai.bundle import ConfigWorkflow

    return ConfigWorkflow(config_file=config_files, run_id=run_id, workflow_type=None, **overrides)


def _run_workflow(config_files: list[str], run_id: str, overrides: Mapping[str, Any]) -> None:
    workflow = _workflow(config_files, run_id, overrides)
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def finetune_fingerprint(cell: Cell, root: Path, profile: Profile, dataset_dirs: Mapping[str, str | None]) -> StageFingerprint:
    """The bundle's fine-tuning stage fingerprint (``fingerprint#finetune``) as the cell would resolve it now.

    Resolving it builds the scenario's splits and the risk stage's cache key (the source checkpoint must exist);
    nothing is trained.
    """
    overrides = cell_overrides(cell, root, profile, dataset_dirs)
    parser = _workflow([bundle_config(cell.scenario.bundle, "train")], "training", overrides).parser
    return parser.get_parsed_content("fingerprint#finetune")


def _check_reuse(cell: Cell, row: Mapping[str, Any], current: StageFingerprint, result_path: Path) -> None:
    """Refuse a finished cell's ``result.json`` unless the fine-tuning fingerprint it records is the current one.

    Raises:
        StaleOutputError: the cell was trained with other settings or inputs (e.g. a bundle default changed since),
            naming the differences and the remedy.
    """
    differences = current.differences(row.get("finetune_fingerprint"))
    if differences:
        lines = current.listed_differences(differences)
        raise StaleOutputError(
            f"grid cell {cell.scenario.name} | {cell.method.name} | seed {cell.seed}: {result_path} was made with "
            f"other fine-tuning settings or inputs than the current ones, so it is not reused. Differences "
            f"(recorded -> now):\n  {lines}\nDelete {result_path.parent} to run the cell again, or use another "
            f"work folder."
        )


def _mean_over_regions(summary: Mapping[str, Any], metric: str) -> float:
    values = [r[metric]["mean"] for r in summary["regions"].values() if r[metric]["mean"] is not None]
    return sum(values) / len(values) if values else math.nan


def _per_case_dice(path: Path) -> dict[str, dict[str, float]]:
    """``{case_id: {region: dice}}`` from an evaluation's ``metrics_per_case.csv``."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    cases: dict[str, dict[str, float]] = {}
    for row in rows:
        cases.setdefault(row["case_id"], {})[row["region"]] = float(row["dice"])
    return cases


def _validation_curve(path: Path) -> dict[str, dict[str, float]]:
    """``{epoch: {region: mean validation Dice}}`` of a ``learning_curves.csv``, epochs as strings (for JSON)."""
    from transrisk_components.reporting.figures import validation_curve

    return {str(epoch): regions for epoch, regions in validation_curve(path).items()}


def run_cell(cell: Cell, root: Path, profile: Profile, dataset_dirs: Mapping[str, str | None]) -> dict[str, Any]:
    """Train, then evaluate on target-val and target-test; write and return the cell's ``result.json`` row.

    The row records the fine-tuning fingerprint of its model (``models/finetune.fingerprint.json``); a finished
    cell is reused only while it matches (see the module docstring).
    """
    folder = cell.folder(root)
    result_path = folder / "result.json"
    if result_path.is_file():
        row = json.loads(result_path.read_text())
        _check_reuse(cell, row, finetune_fingerprint(cell, root, profile, dataset_dirs), result_path)
        return row
    overrides = cell_overrides(cell, root, profile, dataset_dirs)
    train = bundle_config(cell.scenario.bundle, "train")
    evaluate = [train, bundle_config(cell.scenario.bundle, "evaluate")]
    start = time.perf_counter()
    _run_workflow([train], "training", overrides)
    seconds = time.perf_counter() - start
    val_dir = folder / "eval_val"
    _run_workflow(evaluate, "evaluating", {**overrides, "output_dir": str(val_dir), "validate#dataset#data": "$@scenario.split('target_val')"})
    _run_workflow(evaluate, "evaluating", overrides)
    test_summary = json.loads((folder / "eval" / "metrics_summary.json").read_text())
    val_summary = json.loads((val_dir / "metrics_summary.json").read_text())
    row: dict[str, Any] = {
        "scenario": cell.scenario.name,
        "kind": cell.scenario.kind,
        "bundle": cell.scenario.bundle,
        "method": cell.method.name,
        "group": cell.method.group,
        "seed": cell.seed,
        "val_dice": _mean_over_regions(val_summary, "dice"),
        **{f"val_dice_{region}": stats["dice"]["mean"] for region, stats in val_summary["regions"].items()},
        "test_dice": _mean_over_regions(test_summary, "dice"),
        "test_hd95": _mean_over_regions(test_summary, "hd95"),
        **{f"test_dice_{region}": stats["dice"]["mean"] for region, stats in test_summary["regions"].items()},
        "train_seconds": round(seconds, 1),
        "test_cases": _per_case_dice(folder / "eval" / "metrics_per_case.csv"),
        "val_cases": _per_case_dice(val_dir / "metrics_per_case.csv"),
        "val_curve": _validation_curve(folder / "eval" / "learning_curves.csv"),
        "finetune_fingerprint": json.loads((folder / "models" / "finetune.fingerprint.json").read_text()),
    }
    atomic_write_text(result_path, json.dumps(row, indent=2) + "\n")
    return row


def parallel_schedule(cells: Sequence[Cell]) -> tuple[list[list[Cell]], list[list[Cell]]]:
    """Split a grid into two waves of cell groups that can run side by side.

    Wave 1 holds one cell per source model (scenario the source comes from, seed): the first cell of the source's
    own scenario (of a borrowing scenario if the grid lacks it) that fine-tunes from the source, so it trains the
    source once. Wave 2 holds the other cells, one group per scenario and seed, in grid order; a group runs in one
    process, so the risk-map cache of that scenario and seed has one writer. Every cell appears exactly once.
    """
    first: dict[tuple[str, int], Cell] = {}
    for cell in sorted(cells, key=lambda c: c.scenario.source_from is not None):  # the source's own scenario first
        if cell.method.overrides.get("target_init") == "random":
            continue
        first.setdefault((cell.scenario.source_from or cell.scenario.name, cell.seed), cell)
    wave1 = [[cell] for cell in cells if cell in first.values()]
    groups: dict[tuple[str, int], list[Cell]] = {}
    for cell in cells:
        if cell not in first.values():
            groups.setdefault((cell.scenario.name, cell.seed), []).append(cell)
    return wave1, list(groups.values())


def _run_cell_group(
    cells: Sequence[Cell], root: Path, profile: Profile, dataset_dirs: Mapping[str, str | None], threads: int
) -> list[dict[str, Any]]:
    """Worker process body: run ``cells`` one after the other with ``threads`` CPU threads."""
    import torch

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(threads)
    return [run_cell(cell, root, profile, dataset_dirs) for cell in cells]


def run_grid_in_parallel(
    cells: Sequence[Cell],
    root: Path,
    profile: Profile,
    dataset_dirs: Mapping[str, str | None],
    workers: int,
    on_row: Callable[[dict[str, Any]], None] = lambda row: None,
) -> list[dict[str, Any]]:
    """Run the grid's cells in ``workers`` processes (:func:`parallel_schedule`'s two waves); return their rows.

    Each worker gets ``cpu_count // workers`` threads and, on a CUDA machine, shares the GPU. ``on_row`` is called
    in this process for every finished cell (progress). A failing group stops the grid: the groups not started are
    cancelled, the running ones finish, and the error is raised naming the group.
    """
    threads = max(1, (os.cpu_count() or 1) // workers)
    rows: list[dict[str, Any]] = []
    context = multiprocessing.get_context("spawn")  # CUDA cannot be re-initialised in a forked child
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for wave in parallel_schedule(cells):
            pending: dict[Future, list[Cell]] = {
                pool.submit(_run_cell_group, group, root, profile, dataset_dirs, threads): group for group in wave
            }
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    group = pending.pop(future)
                    try:
                        finished = future.result()
                    except Exception as error:
                        for other in pending:
                            other.cancel()
                        first = group[0]
                        raise RuntimeError(
                            f"grid cells of {first.scenario.name}, seed {first.seed} "
                            f"({', '.join(c.method.name for c in group)}) failed: {error}"
                        ) from error
                    for row in finished:
                        on_row(row)
                    rows.extend(finished)
    return rows


def export_risk_overlays(cell: Cell, root: Path, profile: Profile, dataset_dirs: Mapping[str, str | None]) -> Path:
    """Run the bundle's ``export_risk`` for a finished cell: maps, PNG overlays and ``risk_summary.csv``.

    Returns the export folder ``<cell>/eval/risk_maps``; an export already there is kept.
    """
    out = cell.folder(root) / "eval" / "risk_maps"
    if not (out / "risk_summary.csv").is_file():
        configs = [bundle_config(cell.scenario.bundle, "train"), bundle_config(cell.scenario.bundle, "export_risk")]
        overrides = {**cell_overrides(cell, root, profile, dataset_dirs), "risk_export_dir": str(out)}
        _run_workflow(configs, "export_risk", overrides)
    return out


#: Two candidates whose scores differ by less than this (mean validation Dice, 0-1) are tied.
SELECTION_TIE = 0.005


def selection_scores(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Each candidate's score under the selection rule (see :func:`choose_default`), in :data:`METHODS` order.

    The candidates are the default and every ``variant`` and ``sweep`` method with results; each scores the mean
    over scenarios of its mean validation Dice over seeds, counting only the scenarios in which every candidate has
    results (the location-wise map runs on FeTS only, so on a grid with iSeg scenarios every candidate is scored on
    the FeTS ones). Test Dice is never read.
    """
    candidates = [m for m in METHODS if m == DEFAULT_RISK or METHODS[m].group in ("variant", "sweep")]
    per_scenario: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        value = float(row["val_dice"])
        if row["method"] in candidates and not math.isnan(value):
            per_scenario.setdefault(row["method"], {}).setdefault(row["scenario"], []).append(value)
    if not per_scenario:
        return {}
    common = set.intersection(*(set(scenarios) for scenarios in per_scenario.values()))
    return {
        method: sum(sum(per_scenario[method][s]) / len(per_scenario[method][s]) for s in common) / len(common)
        for method in candidates
        if method in per_scenario and common
    }


def choose_default(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The risk-map variant the selection rule picks, from validation Dice only (test Dice is never read).

    The rule, fixed before the study ran: the best :func:`selection_scores` wins; candidates within
    :data:`SELECTION_TIE` of it are a tie, broken in favour of the simpler one, the earlier in :data:`METHODS`
    (the default first, then the variants, then the sweep).
    """
    scores = selection_scores(rows)
    if not scores:
        return None
    best = max(scores.values())
    return next(m for m in scores if scores[m] >= best - SELECTION_TIE)


@dataclass(frozen=True)
class RankingStudy:
    """Does the LEEP ranking of candidate source models predict which fine-tunes best? (FeTS phantom)

    For every target modality (multiclass task) and seed, one source model per candidate modality is trained on the
    same source cases (shared between the targets), fine-tuned plainly on the target, and ranked by
    ``rank_sources`` over the target training cases. The source's own validation Dice (on the target-val cases'
    images of the source's modality) is the simple ranker it is compared with.
    """

    targets: Sequence[str]
    candidates: Sequence[str]
    seeds: Sequence[int]
    profile: str = "quick"

    def scenario(self, source: str, target: str) -> GridScenario:
        """``fets_<source>_to_<target>``, taking its source model from ``fets_<source>_to_<first target>``."""
        first = f"fets_{source}_to_{self.targets[0]}"
        overrides = {"source_modality": source, "target_modality": target}
        return GridScenario(f"fets_{source}_to_{target}", "fets", "ranking", overrides,
                            None if target == self.targets[0] else first)


RANKING = RankingStudy(targets=("t1ce", "flair"), candidates=("t1", "t1ce", "t2", "flair"), seeds=(0, 1, 2))


def _leep_by_candidate(csv_path: Path) -> dict[str, float]:
    with csv_path.open(newline="") as handle:
        return {row["name"]: float(row["leep"]) for row in csv.DictReader(handle)}


def run_ranking_study(study: RankingStudy, root: Path, dataset_dirs: Mapping[str, str | None], progress: Any = None) -> list[dict[str, Any]]:
    """Train, fine-tune, rank and score every (target, candidate, seed); return the rows ``ranking_study.py`` reads.

    Outputs: the grid's usual ``sources/`` and ``cells/`` folders under ``root`` (cells already finished, e.g. by the
    ``quick`` profile in the same folder, are reused), ``ranking/<target>/seed<k>/source_ranking.csv`` and
    ``ranking/source_val/<source>/seed<k>/metrics_summary.json``.

    Args:
        progress: called with a one-line message after each step (e.g. ``tqdm.write``); ``None`` logs it.
    """
    report = progress or logger.warning
    profile = PROFILES[study.profile]
    plain = METHODS[PLAIN]
    rows = []
    for seed in study.seeds:
        for target in study.targets:
            cells = {source: Cell(study.scenario(source, target), plain, seed) for source in study.candidates}
            for source, cell in cells.items():
                result = run_cell(cell, root, profile, dataset_dirs)
                report(f"ranking seed {seed}: {source} -> {target} fine-tuned, test Dice {result['test_dice']:.3f}")
            ranking_dir = root / "ranking" / target / f"seed{seed}"
            own = cells[target] if target in cells else next(iter(cells.values()))
            made_from = _ranking_inputs(cells, own, root)
            inputs_file = ranking_dir / "inputs.json"
            reusable = inputs_file.is_file() and json.loads(inputs_file.read_text()) == made_from
            if not (reusable and (ranking_dir / "source_ranking.csv").is_file()):
                candidates = [{"name": source, "ckpt": str(source_checkpoint(cell, root)), "modality": source}
                              for source, cell in cells.items()]
                candidates_file = ranking_dir / "candidates.json"
                atomic_write_text(candidates_file, json.dumps(candidates, indent=2) + "\n")
                configs = [bundle_config("fets", "train"), bundle_config("fets", "rank_sources")]
                _run_workflow(configs, "rank_sources", {**cell_overrides(own, root, profile, dataset_dirs),
                                                         "candidates_file": str(candidates_file),
                                                         "source_ranking_dir": str(ranking_dir)})
                atomic_write_text(inputs_file, json.dumps(made_from, indent=2, sort_keys=True) + "\n")
            leep = _leep_by_candidate(ranking_dir / "source_ranking.csv")
            report(f"ranking seed {seed}: target {target} LEEP " + ", ".join(f"{k} {v:.4f}" for k, v in leep.items()))
            for source, cell in cells.items():
                rows.append({"scenario": f"fets_to_{target}", "candidate": source, "seed": seed, "leep": leep[source],
                             "source_val_dice": _source_val_dice(cell, root, profile, dataset_dirs),
                             "test_dice": json.loads((cell.folder(root) / "result.json").read_text())["test_dice"]})
    return rows


def _ranking_inputs(cells: Mapping[str, Cell], own: Cell, root: Path) -> dict[str, Any]:
    """What a target's source ranking is made from: each candidate source's checkpoint (SHA-256) and the target's
    training cases and dataset (from the fine-tuning fingerprint of ``own``, a finished cell of that target).
    A ranking on disk is reused only while this matches."""
    settings = json.loads((own.folder(root) / "result.json").read_text())["finetune_fingerprint"]["settings"]
    return {
        "sources": {source: file_sha256(source_checkpoint(cell, root)) for source, cell in cells.items()},
        "target": {key: settings[key] for key in ("dataset_dir", "modality", "task", "train_cases")},
    }


def _source_val_dice(cell: Cell, root: Path, profile: Profile, dataset_dirs: Mapping[str, str | None]) -> float:
    """Mean Dice of the cell's source model on its own modality, over the target-val cases (evaluated once)."""
    source = cell.scenario.overrides["source_modality"]
    out = root / "ranking" / "source_val" / source / f"seed{cell.seed}"
    if not (out / "metrics_summary.json").is_file():
        configs = [bundle_config("fets", "train"), bundle_config("fets", "evaluate")]
        _run_workflow(configs, "evaluating", {**cell_overrides(cell, root, profile, dataset_dirs),
                                              "target_modality": source, "output_dir": str(out),
                                              "validate#dataset#data": "$@scenario.split('target_val')",
                                              "validate#handlers#0#load_path": str(source_checkpoint(cell, root))})
    return _mean_over_regions(json.loads((out / "metrics_summary.json").read_text()), "dice")
