"""Reproduce the paper's comparison with the bundles' own run ids: scenarios x methods x seeds.

Usage (from the repository root)::

    python scripts/reproduce.py run --profile quick      # built-in phantoms, CPU, writes docs/results/quick/
    python scripts/reproduce.py run --profile study --workers 15   # every risk-map variant, chosen on validation
    python scripts/reproduce.py run --profile power --workers 15   # quick at 15 seeds
    python scripts/reproduce.py run --profile full --fets_dir /data/MICCAI_FeTS2021_TrainingData \\
        --iseg_dir /data/iSeg-2019-Training                # everything; meant for a GPU and real data
    python scripts/reproduce.py table docs/results/quick/results.csv   # re-make table.md, the figures, README.md
    python scripts/reproduce.py combine OUT PART_A PART_B   # one report over a profile run scenario group by group
    python scripts/reproduce.py ranking --workers 2   # source-ranking study; last line: ranking: kendall tau = <t> over <k> candidates
    python scripts/reproduce.py ensembles_default docs/results/confirm2/epochs40/results.csv \
        docs/results/confirm2/epochs160/results.csv    # the registered decision on safe#ensembles' default

Training outputs go to ``--work_dir`` (default ``outputs/reproduce/<profile>``, git-ignored); the reports
(``results.csv``, ``results_per_case.csv``, ``table.md``, ``figures/``, ``machine.md``) go to ``--report_dir`` (default
``docs/results/<profile>``). A killed run continues where it stopped: finished cells are kept. The grid itself is
:mod:`transrisk_components.experiments` (profiles in ``profiles.py``, scenarios and methods in ``catalogue.py``).
"""

from __future__ import annotations

import logging
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import fire

from transrisk_components.experiments import PROFILES, RANKING_STUDIES, load_results, reproduce_profile, reproduce_ranking
from transrisk_components.experiments.cells import REPO_ROOT
from transrisk_components.experiments.ensembles_default import ensembles_default as decide_ensembles_default
from transrisk_components.experiments.reports import combine_reports, write_readme, write_table_and_figures


class UsageError(ValueError):
    """A command-line argument this script cannot take (an unknown profile, scenario or study): printed as one line."""


def _command() -> str:
    """This invocation as ``machine.md`` records it."""
    return "python scripts/reproduce.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def run(
    profile: str = "quick",
    work_dir: str | None = None,
    report_dir: str | None = None,
    fets_dir: str | None = None,
    iseg_dir: str | None = None,
    workers: int = 1,
    scenarios: str | tuple[str, ...] | None = None,
) -> None:
    """Run (or continue) the grid of ``profile`` and write its reports.

    Args:
        profile: ``quick`` (phantoms, CPU, a subset), ``study`` (the risk-map variants on three FeTS phantom
            scenarios, chosen by ``transrisk_components.experiments.study.choose_default``), ``power`` (quick at 15
            seeds), ``full`` (every scenario and method); see ``transrisk_components/experiments/profiles.py`` for
            the rest.
        work_dir: training outputs; default ``outputs/reproduce/<profile>``.
        report_dir: reports; default ``docs/results/<profile>``.
        fets_dir: a real FeTS2021 root (``MICCAI_FeTS2021_TrainingData``); default: the profile's testbed phantom.
        iseg_dir: a real iSeg-2019 root (``iSeg-2019-Training``); default: the profile's testbed phantom.
        workers: cells run side by side in this many processes (for a machine with many cores and a GPU); 1 runs
            them one after the other in this process.
        scenarios: only these of the profile's scenarios (comma-separated), e.g. to finish a long profile one
            scenario at a time; the reports then cover those scenarios.
    """
    if profile not in PROFILES:
        raise UsageError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    logging.basicConfig(level=logging.WARNING)
    chosen = PROFILES[profile]
    if scenarios is not None:
        names = tuple(scenarios.split(",")) if isinstance(scenarios, str) else tuple(scenarios)
        unknown = [n for n in names if n not in chosen.scenarios]
        if unknown:
            raise UsageError(f"scenarios {unknown} are not in profile {profile!r}: {list(chosen.scenarios)}")
        chosen = replace(chosen, scenarios=names)
    reproduce_profile(
        profile,
        chosen,
        Path(work_dir or REPO_ROOT / "outputs" / "reproduce" / profile).resolve(),
        Path(report_dir or REPO_ROOT / "docs" / "results" / profile).resolve(),
        {"fets": fets_dir, "iseg": iseg_dir},
        workers,
        _command(),
    )


def table(results_csv: str, report_dir: str | None = None) -> None:
    """Re-make ``table.md``, the figures and ``README.md`` from a ``results.csv`` and the ``results_per_case.csv`` beside it.

    The CSVs are only read (their ``method`` column may hold method ids or, in older reports, display labels).

    Args:
        results_csv: a report's ``results.csv``.
        report_dir: where ``table.md`` and ``figures/`` go; default: the folder of ``results_csv``.
    """
    rows, cases = load_results(Path(results_csv))
    folder = Path(report_dir) if report_dir else Path(results_csv).parent
    write_table_and_figures(rows, cases, folder)
    write_readme(folder)


def combine(report_dir: str, *parts: str) -> None:
    """One report (``report_dir``) over the report folders ``parts`` of one profile run scenario group by group.

    Example: ``python scripts/reproduce.py combine docs/results/confirm/all docs/results/confirm/part_a docs/results/confirm/part_b``
    """
    combine_reports([Path(p) for p in parts], Path(report_dir))


def ensembles_default(*results_csvs: str) -> None:
    """Whether ``safe#ensembles`` becomes the bundles' default, by the rule registered with the second study (both
    training lengths' reports; :mod:`transrisk_components.experiments.ensembles_default`). Prints the evidence per
    length; the last line is ``ensembles default: on`` or ``ensembles default: off``.

    Example: ``python scripts/reproduce.py ensembles_default docs/results/confirm2/epochs40/results.csv
    docs/results/confirm2/epochs160/results.csv``
    """
    decision = decide_ensembles_default({Path(csv).parent.name: load_results(Path(csv))[1] for csv in results_csvs})
    for line in decision.evidence:
        print(line)
    print(f"ensembles default: {'on' if decision.adopt else 'off'}")


def ranking(
    work_dir: str | None = None,
    report_dir: str | None = None,
    seeds: int | tuple[int, ...] | None = None,
    study: str = "mixed",
    workers: int = 1,
) -> None:
    """Run (or continue) a source-ranking study on the FeTS testbed phantom and write its report.

    Uses the ``quick`` profile's training settings. ``mixed`` (default): 11 candidate sources per target (four
    modalities at 10 and 2 source epochs, a four-modality source, a deeper network, a whole-tumour source);
    ``modalities``: the first study's 8 (``transrisk_components/experiments/ranking.py``). Cells finished by an
    earlier invocation in the same ``--work_dir`` are reused. The last line printed is
    ``ranking: kendall tau = <t> over <k> candidates`` (``t``: LEEP's weighted Kendall tau, mean over the targets;
    ``k``: candidates per target).

    Args:
        work_dir: training outputs; default ``outputs/reproduce/ranking_<study>``.
        report_dir: reports; default ``docs/results/ranking_mixed`` (``mixed``) or ``docs/results/ranking``.
        seeds: the seeds to run and report, e.g. ``--seeds 0,2``; default the study's. With the seeds that another
            invocation (e.g. a second process on another seed) finished, it only writes the report.
        study: ``mixed`` or ``modalities``.
        workers: the fine-tuning cells run in this many processes first (the rankings then in this one).
    """
    logging.basicConfig(level=logging.WARNING)
    if study not in RANKING_STUDIES:
        raise UsageError(f"unknown ranking study {study!r}; choose one of {sorted(RANKING_STUDIES)}")
    chosen_study = RANKING_STUDIES[study]
    chosen = (seeds,) if isinstance(seeds, int) else tuple(seeds) if seeds is not None else chosen_study.seeds
    default_report = "ranking_mixed" if study == "mixed" else "ranking"
    reproduce_ranking(
        replace(chosen_study, seeds=tuple(int(s) for s in chosen)),
        Path(work_dir or REPO_ROOT / "outputs" / "reproduce" / f"ranking_{study}").resolve(),
        Path(report_dir or REPO_ROOT / "docs" / "results" / default_report).resolve(),
        _command(),
        workers,
    )


if __name__ == "__main__":
    try:
        fire.Fire({"run": run, "table": table, "combine": combine, "ranking": ranking, "ensembles_default": ensembles_default})
    except UsageError as error:
        sys.exit(f"reproduce.py: {error}")
