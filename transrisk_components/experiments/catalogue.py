"""What the experiment grid can run: transfer scenarios and fine-tuning methods, each under a short stable id.

A method's ``id`` names its cell folders (``cells/<scenario>/<method id>/seed<k>``) and fills the ``method`` column
of the grid's CSV files; its ``label`` is what tables and figures show. A scenario's ``name`` is its id.
``results.csv`` files written before methods had ids hold labels in their ``method`` column: :func:`method_id`
reads either.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BEST_CANDIDATE", "BETTER_OF_PLAIN_AND_SCRATCH", "COMPOSITE_REGIONS", "CONTROLS", "DEAD_CLASSES_REINIT", "DEFAULT_RISK", "DEFAULT_SWEEP_POINT",
    "DERIVED_METHODS", "FOREGROUND_MAP", "GridScenario", "LINEAR_STRENGTHS_ABOVE_SWEEP", "LOCATION_LEEP", "Method",
    "method_id", "method_label", "METHODS", "NEGLOG_POWER10", "PLAIN", "PLAIN_RESTARTS", "RANDOM_MAP", "restart_id",
    "RESTARTS", "RISK_DICE", "RISK_RESTARTS", "RISK_SAMPLING", "SAFE", "SAFE_COMPOSITE", "SAFE_ENSEMBLE", "SAFE_RACED", "SCENARIOS", "SCRATCH",
    "STUDY_VARIANTS", "sweep_id", "SWEEP_STRENGTHS", "UNIFORM_MAP", "VOXEL_MEAN_NORM",
]

SCRATCH = "scratch"
PLAIN = "plain"
DEFAULT_RISK = "risk"
DEAD_CLASSES_REINIT = "risk_reinit"
UNIFORM_MAP = "uniform_map"
RANDOM_MAP = "random_map"
#: Control: the default's loss with a map that is 1 on the target foreground -- a class weight, no transferability.
FOREGROUND_MAP = "foreground_map"
VOXEL_MEAN_NORM = "voxel_norm"
NEGLOG_POWER10 = "neglog_power10"
LOCATION_LEEP = "location_leep"
RISK_DICE = "risk_dice"
RISK_SAMPLING = "risk_sampling"
L2SP = "l2sp"
FOCAL = "focal"
TOPK_CE = "topk_ce"
#: Methods that safe transfer derives from other cells' results (:mod:`transrisk_components.experiments.safe`).
SAFE = "safe"
SAFE_RACED = "safe_raced"
#: Safe transfer with ``safe#ensembles true``: the rule among the candidates and their ensembles
#: (:mod:`transrisk_components.experiments.ensembles`).
SAFE_ENSEMBLE = "safe_ensemble"
#: The per-region composite of the candidates (``safe#composites``), and safe transfer choosing among the candidates,
#: their ensembles and it (:mod:`transrisk_components.experiments.composites`; exploratory, not registered in #35).
COMPOSITE_REGIONS = "composite_regions"
SAFE_COMPOSITE = "safe_composite"
#: Per seed, the better of plain fine-tuning and training from scratch by mean *test* Dice: an oracle no user has,
#: the bar that safe transfer promises not to fall below.
BETTER_OF_PLAIN_AND_SCRATCH = "better_of_plain_scratch"
#: Per seed, the candidate of safe transfer with the highest mean *test* Dice: the best single start, an oracle.
BEST_CANDIDATE = "best_candidate"
#: Equal-compute controls of safe transfer (three runs): three restarts of one start -- the bundle's ``restart``, a
#: fine-tuning seed of its own on the same split and the same source model and maps -- chosen among on validation by
#: the same rule. They tell the candidates' diversity apart from three tries.
PLAIN_RESTARTS = "plain_x3"
RISK_RESTARTS = "risk_x3"
#: Runs per control, as many as safe transfer's candidates.
RESTARTS = 3

#: Strengths of the sweep, for the linear and the exponential scheme.
SWEEP_STRENGTHS = (0.0, 1.0, 2.0, 4.0, 8.0)
#: Linear strengths above the sweep's top (the default's strength).
LINEAR_STRENGTHS_ABOVE_SWEEP = (16.0, 32.0)


def sweep_id(scheme: str, strength: float) -> str:
    """Id of a sweep point, e.g. ``sweep_id("linear", 8.0) == "linear_s8"``."""
    return f"{scheme}_s{strength:g}"


def restart_id(method: str, restart: int) -> str:
    """Id of a restart of ``method``: the method itself for restart 0, e.g. ``restart_id("plain", 2) == "plain_r2"``."""
    return method if restart == 0 else f"{method}_r{restart}"


#: Control -> the cells it chooses among, in the rule's tie order (restart 0 first).
CONTROLS: dict[str, tuple[str, ...]] = {
    control: tuple(restart_id(method, k) for k in range(RESTARTS))
    for control, method in ((PLAIN_RESTARTS, PLAIN), (RISK_RESTARTS, DEFAULT_RISK))
}


#: The sweep point that is the bundles' default (``risk#scheme``, ``risk#strength``).
DEFAULT_SWEEP_POINT = sweep_id("linear", 8.0)


@dataclass(frozen=True)
class GridScenario:
    """A transfer setting: which bundle, and the config overrides that pick source and target.

    Attributes:
        name: the scenario's id (folder names, the ``scenario`` column).
        bundle: ``fets`` or ``iseg``.
        kind: cross-modality, cross-task, few-shot, cross-site, multi-modal source, ranking, or testbed check.
        overrides: config ids of the bundle's ``train.json`` and their values.
        source_from: another scenario whose source model this one reuses (same source modality, task and source
            cases); the source stage's fingerprint still checks that they match.
    """

    name: str
    bundle: str
    kind: str
    overrides: Mapping[str, Any]
    source_from: str | None = None


@dataclass(frozen=True)
class Method:
    """A fine-tuning method: config overrides on top of the bundle's ``train.json``.

    Attributes:
        id: short and stable; names the cell folders and fills the ``method`` column.
        label: what reports show.
        overrides: config ids of the bundle's ``train.json`` and their values.
        group: ``main``, ``safe`` (dead-class action), ``variant`` (other risk-map settings), ``sweep``,
            ``ablation``, ``alternative`` (other losses), ``control`` (a restart of another method, for the
            equal-compute controls), ``ensemble`` (the candidates' cells averaged, evaluated, never trained),
            ``composite`` (each region from one candidate's cell, evaluated, never trained) or
            ``derived`` (chosen from other cells).
        bundles: the bundles the method applies to (``None``: all); the grid leaves out the other cells (the
            location-wise map needs co-registered cases, which iSeg's are not).
    """

    id: str
    label: str
    overrides: Mapping[str, Any]
    group: str = "main"
    bundles: tuple[str, ...] | None = None


def _loss_override(loss: Mapping[str, Any]) -> dict[str, Any]:
    """Override of the ``loss`` id with a plain (map-free) loss wrapped as the trainer expects."""
    return {"risk#enabled": False, "loss": {"_target_": "transrisk_components.bundle.engine.batches.TransferLoss", "loss": dict(loss)}}


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
        # A multi-modal source (the Model Zoo's BraTS input: T1ce, T1, T2, FLAIR) into one-modality targets.
        GridScenario("fets_all_to_t1ce", "fets", "multi-modal source", {"source_modality": "all", "target_modality": "t1ce"}),
        GridScenario(
            "fets_all_cross_site",
            "fets",
            "multi-modal source",
            {
                "source_modality": "all",
                "target_modality": "flair",
                "partition_csv": "partitioning_1.csv",
                "source_partitions": ["01", "02"],
                "target_partitions": ["03"],
            },
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
    m.id: m
    for m in [
        Method(SCRATCH, "from scratch", {"target_init": "random", "risk#enabled": False}),
        Method(PLAIN, "plain fine-tuning", {"risk#enabled": False}),
        Method(DEFAULT_RISK, "risk-weighted (default)", {}),
        Method(DEAD_CLASSES_REINIT, "risk-weighted, dead classes re-initialised", {"risk#dead_classes": "reinit"},
               "safe"),
        Method(UNIFORM_MAP, "ablation: uniform map, foreground norm.",
               {"risk#scheme": "uniform", "risk#ce_denominator": "foreground"}, "ablation"),
        Method(RANDOM_MAP, "ablation: random map", {"risk#shuffle": True}, "ablation"),
        Method(FOREGROUND_MAP, "ablation: foreground map", {"risk#map": "foreground"}, "ablation"),
        # the weighted CE divided by the patch's voxel count instead of the case's foreground size
        Method(VOXEL_MEAN_NORM, "risk map, voxel-mean norm.", {"risk#ce_denominator": "voxels"}, "variant"),
        Method(
            NEGLOG_POWER10,
            "-log T min-max, 10^r, CE over foreground + Dice",
            {
                "risk#map_normalization": "neglog_minmax",
                "risk#scheme": "power10",
                "risk#strength": 1.0,
                "risk#ce_voxels": "foreground",
                "risk#ce_denominator": "foreground",
            },
            "variant",
        ),
        Method(
            LOCATION_LEEP,
            "location-wise LEEP, exp(-LEEP)",
            {"risk#map": "location", "risk#map_normalization": "complement", "risk#scheme": "inverse", "risk#strength": 1.0},
            "variant",
            bundles=("fets",),
        ),
        Method(RISK_DICE, "risk-weighted Dice", {"risk#dice": "weighted"}, "variant"),
        Method(RISK_SAMPLING, "risk-guided sampling", {"risk#sampling": "risk"}, "variant"),
        *[
            Method(sweep_id(scheme, s), f"sweep: {scheme} s={s}", {"risk#scheme": scheme, "risk#strength": s}, "sweep")
            for scheme in ("linear", "exponential")
            for s in SWEEP_STRENGTHS
        ],
        *[
            Method(sweep_id("linear", s), f"sweep: linear s={s}", {"risk#scheme": "linear", "risk#strength": s}, "sweep")
            for s in LINEAR_STRENGTHS_ABOVE_SWEEP
        ],
        Method(
            L2SP,
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
            FOCAL,
            "focal loss",
            _loss_override({"_target_": "DiceFocalLoss", "to_onehot_y": True, "softmax": True, "gamma": 2.0}),
            "alternative",
        ),
        Method(TOPK_CE, "top-k CE", _loss_override({"_target_": "transrisk_components.method.baselines.TopKDiceCELoss"}),
               "alternative"),
        *[
            Method(restart_id(PLAIN, k), f"plain fine-tuning, restart {k}", {"risk#enabled": False, "restart": k}, "control")
            for k in range(1, RESTARTS)
        ],
        *[Method(restart_id(DEFAULT_RISK, k), f"risk-weighted, restart {k}", {"restart": k}, "control") for k in range(1, RESTARTS)],
    ]
}

#: The methods safe transfer derives from the candidates' cells, and the candidates' ensembles; they have rows but no
#: cells.
DERIVED_METHODS: dict[str, Method] = {
    m.id: m
    for m in [
        Method(SAFE, "safe transfer", {}, "derived"),
        Method(SAFE_RACED, "safe transfer, raced", {}, "derived"),
        Method(BETTER_OF_PLAIN_AND_SCRATCH, "better of plain and scratch (test oracle)", {}, "derived"),
        Method(SAFE_ENSEMBLE, "safe transfer with ensembles", {}, "derived"),
        Method(BEST_CANDIDATE, "best single candidate (test oracle)", {}, "derived"),
        # the ensembles of bundle/workflow/ensembles.py, evaluated by experiments/ensembles.py
        Method("ensemble_top2", "ensemble of the best two (softmax mean)", {}, "ensemble"),
        Method("ensemble_all", "ensemble of all candidates (softmax mean)", {}, "ensemble"),
        # the per-region composite of bundle/workflow/composites.py, evaluated by experiments/composites.py
        Method(COMPOSITE_REGIONS, "per-region composite of the candidates", {}, "composite"),
        Method(SAFE_COMPOSITE, "safe transfer with ensembles and composite", {}, "derived"),
        Method(PLAIN_RESTARTS, "plain x3 restarts, chosen on validation", {}, "derived"),
        Method(RISK_RESTARTS, "risk map x3 restarts, chosen on validation", {}, "derived"),
    ]
}

#: The risk-map variants the variant study compares with the default: every ``variant`` and sweep point, less the
#: sweep points that repeat another candidate (the default's own; exponential s=0 is linear s=0, weights 1
#: everywhere).
STUDY_VARIANTS = tuple(
    m for m in METHODS
    if METHODS[m].group in ("variant", "sweep") and m not in (DEFAULT_SWEEP_POINT, sweep_id("exponential", 0.0))
)

_ALL = {**METHODS, **DERIVED_METHODS}
_BY_LABEL = {m.label: m.id for m in _ALL.values()}


def method_label(method: str) -> str:
    """The display label of the method with id ``method``; a name the catalogue does not know is shown as it is."""
    return _ALL[method].label if method in _ALL else method


def method_id(name: str) -> str:
    """The id of a method named by its id or by its display label.

    The ``method`` and ``chosen`` columns of ``results.csv`` and ``results_per_case.csv`` files written before
    methods had ids hold display labels; reading them through this function gives the ids the grid uses now.

    Raises:
        ValueError: ``name`` is neither an id nor a label of :data:`METHODS` or :data:`DERIVED_METHODS`.
    """
    if name in _ALL:
        return name
    if name in _BY_LABEL:
        return _BY_LABEL[name]
    raise ValueError(f"unknown method {name!r}: neither an id ({sorted(_ALL)}) nor a display label of one")
