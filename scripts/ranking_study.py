"""Summarise the source-ranking study: the weighted Kendall tau (with a seed-bootstrap CI), tau-b and top-1 gap of
the LEEP, GBC, source-val-Dice and random rankings.

Input: one CSV row per (scenario, candidate, seed)::

    scenario,candidate,seed,leep,gbc,source_val_dice,test_dice

Writes ``ranking_study.csv``, ``ranking_study.md`` and ``ranking_study.png`` under ``--report_dir`` and prints as its
last line ``ranking: kendall tau = <t> over <k> candidates``. The study itself is
:mod:`transrisk_components.experiments.ranking_report`; ``scripts/reproduce.py ranking`` makes the input.

Usage (from the repository root)::

    python scripts/ranking_study.py summarise --results outputs/ranking/results.csv --report_dir docs/results/ranking
"""

from __future__ import annotations

import fire

from transrisk_components.experiments.cells import REPO_ROOT
from transrisk_components.experiments.ranking_report import BOOTSTRAP, RANDOM_SEED, summarise


def _summarise_command(
    results: str, report_dir: str = str(REPO_ROOT / "docs" / "results" / "ranking"), seed: int = RANDOM_SEED,
    resamples: int = BOOTSTRAP,
) -> None:
    """Write the study's CSV, Markdown and PNG from ``results``; nothing is printed after the tau line.

    Args:
        results: the per (scenario, candidate, seed) CSV.
        report_dir: the report folder; default ``docs/results/ranking``.
        seed: of the random ranker and the bootstrap.
        resamples: bootstrap resamples of the seeds.
    """
    summarise(results, report_dir, seed, resamples)


if __name__ == "__main__":
    fire.Fire({"summarise": _summarise_command})
