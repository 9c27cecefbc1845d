"""The paper's comparison as a grid of bundle runs: scenarios x methods x seeds, and what is derived from it.

Modules, each with one job:

- :mod:`~.catalogue`: scenarios and methods (short stable ids, display labels; :func:`~.catalogue.method_id` reads
  either);
- :mod:`~.profiles`: named parts of the grid with their training settings and phantoms;
- :mod:`~.cells`: a cell's folders and config overrides, and the cells of a profile;
- :mod:`~.runner`: running cells with the bundles' own run ids, one after the other or side by side;
- :mod:`~.safe`: safe transfer's derived rows, by the bundles' selection rule;
- :mod:`~.study`: the variant study's rule for the bundles' default;
- :mod:`~.ranking`, :mod:`~.ranking_report`: the source-ranking study's runs and summary;
- :mod:`~.reports`: the report folder (CSVs keyed by id, tables and figures with labels);
- :mod:`~.reproduce`: a profile or the ranking study from work folder to report folder (``scripts/reproduce.py``).

This layer sits above ``bundle``: it may import every other layer of the package, and none of them imports it.
"""

from transrisk_components.experiments.catalogue import (
    BETTER_OF_PLAIN_AND_SCRATCH,
    DEAD_CLASSES_REINIT,
    DEFAULT_RISK,
    DEFAULT_SWEEP_POINT,
    DERIVED_METHODS,
    FOREGROUND_MAP,
    LINEAR_STRENGTHS_ABOVE_SWEEP,
    LOCATION_LEEP,
    METHODS,
    NEGLOG_POWER10,
    PLAIN,
    RANDOM_MAP,
    RISK_DICE,
    RISK_SAMPLING,
    SAFE,
    SAFE_RACED,
    SCENARIOS,
    SCRATCH,
    STUDY_VARIANTS,
    SWEEP_STRENGTHS,
    UNIFORM_MAP,
    VOXEL_MEAN_NORM,
    GridScenario,
    Method,
    method_id,
    method_label,
    sweep_id,
)
from transrisk_components.experiments.cells import Cell, grid, source_checkpoint
from transrisk_components.experiments.profiles import FEW_SHOT_CURVE, HEADLINE_METHODS, PROFILES, Profile
from transrisk_components.experiments.ranking import (
    RANKING,
    RANKING_MIXED,
    RANKING_STUDIES,
    RankingStudy,
    StudyCandidate,
    run_ranking_study,
    training_length_candidates,
)
from transrisk_components.experiments.reports import load_results
from transrisk_components.experiments.reproduce import reproduce_profile, reproduce_ranking
from transrisk_components.experiments.runner import (
    export_risk_overlays,
    finetune_fingerprint,
    parallel_schedule,
    prepare_phantoms,
    run_cell,
    run_grid_in_parallel,
)
from transrisk_components.experiments.safe import SAFE_CANDIDATES, SAFE_RUNGS, safe_transfer_rows
from transrisk_components.experiments.study import choose_default, selection_scores

__all__ = [
    "BETTER_OF_PLAIN_AND_SCRATCH", "DEAD_CLASSES_REINIT", "DEFAULT_RISK", "DEFAULT_SWEEP_POINT", "DERIVED_METHODS",
    "FEW_SHOT_CURVE", "FOREGROUND_MAP", "HEADLINE_METHODS", "LINEAR_STRENGTHS_ABOVE_SWEEP", "LOCATION_LEEP",
    "METHODS", "NEGLOG_POWER10", "PLAIN", "PROFILES", "RANDOM_MAP", "RANKING", "RANKING_MIXED", "RANKING_STUDIES",
    "RISK_DICE", "RISK_SAMPLING", "SAFE",
    "SAFE_CANDIDATES", "SAFE_RACED", "SAFE_RUNGS", "SCENARIOS", "SCRATCH", "STUDY_VARIANTS", "SWEEP_STRENGTHS",
    "UNIFORM_MAP", "VOXEL_MEAN_NORM", "Cell", "GridScenario", "Method", "Profile", "RankingStudy", "StudyCandidate", "choose_default",
    "export_risk_overlays", "finetune_fingerprint", "grid", "load_results", "method_id", "method_label",
    "parallel_schedule", "prepare_phantoms", "reproduce_profile", "reproduce_ranking", "run_cell",
    "run_grid_in_parallel", "run_ranking_study", "safe_transfer_rows", "selection_scores", "source_checkpoint",
    "sweep_id", "training_length_candidates",
]
