"""The experiment grid end to end on a tiny grid: cells, results, table, figures and resumption."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from grid_helpers import TINY

from transrisk_components import experiments

REPO_ROOT = Path(__file__).resolve().parents[1]


def reproduce_tiny(work: Path, reports: Path, phantom: Path | None, workers: int = 1) -> None:
    """What ``scripts/reproduce.py run`` does, with the tiny profile (which the command line does not offer)."""
    experiments.reproduce_profile("tiny", TINY, work, reports, {"fets": str(phantom) if phantom else None}, workers,
                                  command="pytest")


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory, fets_phantom: str):
    work, reports = tmp_path_factory.mktemp("work"), tmp_path_factory.mktemp("reports")
    reproduce_tiny(work, reports, Path(fets_phantom))
    return Path(fets_phantom), work, reports


def test_tiny_grid_writes_one_row_per_cell_and_the_reports(tiny_grid):
    _, work, reports = tiny_grid
    with (reports / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    cells = ("scratch", "plain", "risk")
    derived = ("safe", "safe_raced", "better_of_plain_scratch", "best_candidate")
    assert sorted((r["method"], r["seed"]) for r in rows) == sorted((m, s) for m in cells + derived for s in ("0", "1"))
    for row in rows:
        assert 0 <= float(row["test_dice"]) <= 1 and 0 <= float(row["val_dice"]) <= 1
        assert {"test_dice_ET", "test_dice_TC", "test_dice_WT", "val_dice_ET", "val_dice_TC", "val_dice_WT"} <= set(row)
        assert (row["chosen"] in cells) == (row["method"] in derived)
    table = (reports / "table.md").read_text()
    assert "| risk-weighted (default) |" in table and "Paired difference" in table  # labels, not ids
    assert "Promise 1" in table and "| safe transfer - plain fine-tuning | fets_t1_to_flair | ET |" in table
    with (reports / "validation_per_case.csv").open() as handle:
        validation = list(csv.DictReader(handle))
    assert {(r["method"], r["seed"], r["region"]) for r in validation} == {
        (m, s, g) for m in cells for s in ("0", "1") for g in ("ET", "TC", "WT")}
    assert (reports / "figures" / "safe_vs_better_of_plain_and_scratch.png").is_file()
    assert (reports / "figures" / "dice_by_method.png").stat().st_size > 10_000
    assert "profile: tiny" in (reports / "machine.md").read_text()
    readme = (reports / "README.md").read_text()
    assert "profile: tiny" in readme and readme.endswith(table), "the folder's README is generated from its tables"
    assert "(figures/dice_by_method.png)" in readme
    assert len(list(work.glob("sources/*/seed*/source.pt"))) == 2, "one source model per scenario and seed"
    assert sorted(p.name for p in work.glob("cells/fets_t1_to_flair/*")) == sorted(cells), "cell folders are ids"


def test_a_grid_with_ensembles_evaluates_them_and_chooses_among_candidates_and_ensembles(tiny_grid, tmp_path):
    from transrisk_components.bundle.workflow.selection import choose_candidate
    from transrisk_components.experiments.reports import load_results

    phantom, trained, _ = tiny_grid
    work = tmp_path / "work"
    shutil.copytree(trained, work)  # the cells are reused; the ensembles are evaluated in the copy alone
    kept_cells = sorted(p.stat().st_mtime_ns for p in work.glob("cells/*/[!e]*/seed*/result.json"))
    profile = dataclasses.replace(TINY, ensembles=True)
    experiments.reproduce_profile("tiny", profile, work, tmp_path, {"fets": str(phantom)}, 1, command="pytest")
    assert sorted(p.stat().st_mtime_ns for p in work.glob("cells/*/[!e]*/seed*/result.json")) == kept_cells
    rows, _ = load_results(tmp_path / "results.csv")
    by = {(r["method"], int(r["seed"])): r for r in rows}
    for seed in (0, 1):
        assert by[("ensemble_top2", seed)]["group"] == "ensemble" and by[("ensemble_all", seed)]["members"].count("+") == 2
        assert int(by[("safe", seed)]["epochs"]) == 1 == int(by[("ensemble_all", seed)]["epochs"])
        result = json.loads((work / "cells" / "fets_t1_to_flair" / "ensemble_all" / f"seed{seed}" / "result.json").read_text())
        validation = {m: json.loads((work / "cells" / "fets_t1_to_flair" / m / f"seed{seed}" / "result.json").read_text())["val_cases"]
                      for m in ("risk", "plain", "scratch")}
        validation["ensemble_top2"] = json.loads((work / "cells" / "fets_t1_to_flair" / "ensemble_top2" / f"seed{seed}"
                                                  / "result.json").read_text())["val_cases"]
        validation["ensemble_all"] = result["val_cases"]
        assert by[("safe_ensemble", seed)]["chosen"] == choose_candidate(validation).chosen
        best = max(("risk", "plain", "scratch"), key=lambda m: float(by[(m, seed)]["test_dice"]))
        assert float(by[("best_candidate", seed)]["test_dice"]) == float(by[(best, seed)]["test_dice"])
    kept = sorted(p.stat().st_mtime_ns for p in work.glob("cells/*/ensemble_*/seed*/result.json"))
    experiments.reproduce_profile("tiny", profile, work, tmp_path, {"fets": str(phantom)}, 1, command="pytest")
    assert sorted(p.stat().st_mtime_ns for p in work.glob("cells/*/ensemble_*/seed*/result.json")) == kept, "reused"


def test_a_grid_with_composites_evaluates_them_and_chooses_among_candidates_ensembles_and_composite(
    tiny_grid, tmp_path, monkeypatch,
):
    """The tiny cells' Dice are near 0 and tie, so the assignment is fixed here (the bundles' rule for it is tested in
    test_composites.py); what is tested is that the grid builds, evaluates, reuses and chooses as the bundle does."""
    from transrisk_components.bundle.workflow.selection import choose_candidate
    from transrisk_components.experiments import composites
    from transrisk_components.experiments.reports import load_results

    phantom, trained, _ = tiny_grid
    work = tmp_path / "work"
    shutil.copytree(trained, work)
    fixed = {"ET": "plain", "TC": "risk", "WT": "risk"}
    monkeypatch.setattr(composites, "region_assignment", lambda validation, regions: dict(fixed))
    profile = dataclasses.replace(TINY, ensembles=True, composites=True)
    experiments.reproduce_profile("tiny", profile, work, tmp_path, {"fets": str(phantom)}, 1, command="pytest")
    rows, _ = load_results(tmp_path / "results.csv")
    by = {(r["method"], int(r["seed"])): r for r in rows}
    cell = work / "cells" / "fets_t1_to_flair"
    for seed in (0, 1):
        assert by[("composite_regions", seed)]["group"] == "composite" and by[("composite_regions", seed)]["members"] == "risk+plain"
        result = json.loads((cell / "composite_regions" / f"seed{seed}" / "result.json").read_text())
        assert result["region_from"] == fixed
        validation = {m: json.loads((cell / m / f"seed{seed}" / "result.json").read_text())["val_cases"]
                      for m in ("risk", "plain", "scratch", "ensemble_top2", "ensemble_all", "composite_regions")}
        assert by[("safe_composite", seed)]["chosen"] == choose_candidate(validation).chosen
        assert by[("safe_ensemble", seed)]["chosen"] != "composite_regions", "the registered method never sees the composite"
    assert "Exploratory, not a registered hypothesis" in (tmp_path / "table.md").read_text()
    kept = sorted(p.stat().st_mtime_ns for p in work.glob("cells/*/composite_regions/seed*/result.json"))
    experiments.reproduce_profile("tiny", profile, work, tmp_path, {"fets": str(phantom)}, 1, command="pytest")
    assert sorted(p.stat().st_mtime_ns for p in work.glob("cells/*/composite_regions/seed*/result.json")) == kept, "reused"
    older = cell / "composite_regions" / "seed0" / "result.json"  # as rows composed per sliding window were written
    older.write_text(json.dumps({k: v for k, v in json.loads(older.read_text()).items() if k != "evaluated_with"}))
    experiments.reproduce_profile("tiny", profile, work, tmp_path, {"fets": str(phantom)}, 1, command="pytest")
    assert json.loads(older.read_text())["evaluated_with"] == composites.EVALUATED_WITH, "evaluated again"


def test_a_killed_grid_continues_with_the_missing_cells_only(tiny_grid):
    phantom, work, reports = tiny_grid
    results = sorted(work.glob("cells/*/*/seed*/result.json"))
    missing = results[0]
    missing.unlink()
    stamps = {p: p.stat().st_mtime_ns for p in results[1:]}
    reproduce_tiny(work, reports, phantom)
    assert missing.is_file(), "the missing cell ran again"
    assert {p: p.stat().st_mtime_ns for p in results[1:]} == stamps, "finished cells are kept"


def test_a_finished_cell_is_reused_only_with_its_fine_tuning_fingerprint(tiny_grid):
    """A changed risk-map setting (as when a bundle default changes) stops the grid at the risk-map cell with the
    difference; the plain fine-tuning cell, which reads no risk map, is still reused."""

    from transrisk_components.bundle.io.records import StaleOutputError

    phantom, work, _ = tiny_grid
    changed = dataclasses.replace(TINY, overrides={**TINY.overrides, "risk#map_normalization": "minmax"})
    cells = {c.method.id: c for c in experiments.grid(changed) if c.seed == 0}
    dirs = {"fets": str(phantom)}
    stamp = (cells[experiments.PLAIN].folder(work) / "result.json").stat().st_mtime_ns
    row = experiments.run_cell(cells[experiments.PLAIN], work, changed, dirs)
    assert row["method"] == experiments.PLAIN and "risk" not in row["finetune_fingerprint"]["upstream"]
    assert (cells[experiments.PLAIN].folder(work) / "result.json").stat().st_mtime_ns == stamp
    with pytest.raises(StaleOutputError, match=r"upstream\.risk: [0-9a-f]{16} -> [0-9a-f]{16}"):
        experiments.run_cell(cells[experiments.DEFAULT_RISK], work, changed, dirs)


def test_ranking_study_on_the_tiny_grid(tiny_grid):
    """Four candidate sources (two modalities at two source training lengths), two targets, one seed: fine-tuned
    Dice, LEEP and GBC from rank_sources, source-val Dice."""
    phantom, work, _ = tiny_grid
    candidates = experiments.training_length_candidates(("t1", "flair"), (1, 2))
    assert [c.id for c in candidates] == ["t1_e1", "t1_e2", "flair_e1", "flair_e2"]
    study = experiments.RankingStudy(targets=("flair", "t2"), candidates=candidates, seeds=(0,), profile=TINY)
    rows = experiments.run_ranking_study(study, work, {"fets": str(phantom)})
    assert sorted((r["scenario"], r["candidate"]) for r in rows) == sorted(
        (f"fets_to_{t}", c.id) for t in ("flair", "t2") for c in candidates)
    for row in rows:
        assert row["leep"] < 0 and -12 <= row["gbc"] <= 0, row  # 4 target classes: GBC in [-12, 0]
        assert 0 <= row["source_val_dice"] <= 1 and 0 <= row["test_dice"] <= 1
    # each candidate's source is trained once (for the first target) and shared with the second
    assert sorted(p.parent.parent.name for p in work.glob("sources/fets_*_e*_to_*/seed0/source.pt")) == sorted(
        f"fets_{c.id}_to_flair" for c in candidates)
    made = json.loads((work / "sources" / "fets_t1_e2_to_flair" / "seed0" / "source.fingerprint.json").read_text())
    assert made["epochs"] == 2 and made["config"]["source_modality"] == "t1", "the candidate's settings are used"
    csv_path = work / "ranking" / "t2" / "seed0" / "source_ranking.csv"
    ranking = csv_path.read_text()
    assert ranking.startswith("rank,name") and ranking.count("\n") == 5 and ",gbc," in ranking.splitlines()[0]
    # a ranking is reused only while its sources and target cases are the ones it was made from
    stamp = csv_path.stat().st_mtime_ns
    experiments.run_ranking_study(study, work, {"fets": str(phantom)})
    assert csv_path.stat().st_mtime_ns == stamp
    inputs = csv_path.with_name("inputs.json")
    inputs.write_text(inputs.read_text().replace('"t1_e1": "', '"t1_e1": "0'))  # as if the T1 source had changed since
    experiments.run_ranking_study(study, work, {"fets": str(phantom)})
    assert csv_path.stat().st_mtime_ns != stamp and '"t1_e1": "0' not in inputs.read_text()


def test_ranking_study_with_candidates_of_other_kinds_foreign_source(tiny_grid):
    """The mixed study's kinds of candidate at tiny size: a four-modality source (4 input channels, ranked on the
    target cases' four images), a deeper network (ranked with its own network overrides) and another task (2
    classes)."""
    phantom, work, _ = tiny_grid
    candidates = (
        experiments.StudyCandidate("all_e1", {"source_modality": "all", "source_epochs": 1}),
        experiments.StudyCandidate("t1_deep_e1", {"source_modality": "t1", "source_epochs": 1,
                                                  "network_def#blocks_down": [1, 2, 2], "network_def#blocks_up": [1, 1]}),
        experiments.StudyCandidate("t1_wt_e1", {"source_modality": "t1", "source_task": "WT", "source_epochs": 1}),
    )
    study = experiments.RankingStudy(targets=("flair",), candidates=candidates, seeds=(0,), profile=TINY)
    rows = experiments.run_ranking_study(study, work, {"fets": str(phantom)})
    assert sorted(r["candidate"] for r in rows) == ["all_e1", "t1_deep_e1", "t1_wt_e1"]
    for row in rows:
        assert row["leep"] < 0 and 0 <= row["source_val_dice"] <= 1 and 0 <= row["test_dice"] <= 1, row
    entries = {e["name"]: e for e in json.loads((work / "ranking" / "flair" / "seed0" / "candidates.json").read_text())}
    assert entries["all_e1"]["input_modality"] == "all" and "input_modality" not in entries["t1_wt_e1"]
    assert entries["t1_deep_e1"]["network"] == {"blocks_down": [1, 2, 2], "blocks_up": [1, 1]}
    with open(work / "ranking" / "flair" / "seed0" / "source_ranking.csv", newline="") as handle:
        classes = {r["name"]: int(r["num_source_classes"]) for r in csv.DictReader(handle)}
    assert classes == {"all_e1": 4, "t1_deep_e1": 4, "t1_wt_e1": 2}
    made = json.loads((work / "sources" / "fets_all_e1_to_flair" / "seed0" / "source.fingerprint.json").read_text())
    assert made["config"]["source_modality"] == "all", "the four-modality candidate's source is trained on all four"


def test_the_tiny_grid_in_two_worker_processes_gives_the_same_cells(tiny_grid, tmp_path):
    """``--workers 2``: the cells run in spawned processes (sources first), and the reports cover every cell."""
    phantom, _, serial_reports = tiny_grid
    work, reports = tmp_path / "work", tmp_path / "reports"
    reproduce_tiny(work, reports, phantom, workers=2)
    with (reports / "results.csv").open() as handle, (serial_reports / "results.csv").open() as serial:
        assert sorted((r["method"], r["seed"]) for r in csv.DictReader(handle)) == sorted(
            (r["method"], r["seed"]) for r in csv.DictReader(serial))
    assert len(list(work.glob("sources/*/seed*/source.pt"))) == 2, "one source model per scenario and seed"
    assert "2 worker processes" in (reports / "machine.md").read_text()


def test_a_second_grid_on_a_busy_work_folder_stops_before_any_cell(tmp_path):
    from bundle_helpers import folder_locked_by_another_process

    from transrisk_components.utils.lock import FolderBusyError

    with folder_locked_by_another_process(tmp_path):
        with pytest.raises(FolderBusyError, match="another --work_dir"):
            reproduce_tiny(tmp_path, tmp_path / "r", None)
    assert not (tmp_path / "cells").exists()


@pytest.mark.parametrize("arguments, message", [(["--profile", "tiny"], "unknown profile 'tiny'"),
                                                (["--scenarios", "fets_t1_to_flair"], "not in profile 'quick'")])
def test_the_command_line_refuses_unknown_profiles_and_scenarios(tmp_path, arguments, message):
    repo = REPO_ROOT
    done = subprocess.run([sys.executable, str(repo / "scripts" / "reproduce.py"), "run", *arguments,
                           "--work_dir", str(tmp_path)], capture_output=True, text=True, cwd=repo)
    assert done.returncode != 0 and message in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not list(tmp_path.iterdir())


def test_reports_of_a_profile_run_in_parts_combine_into_one(tiny_grid, tmp_path):
    from transrisk_components.experiments.reports import combine_reports, load_results
    from transrisk_components.reporting.results import write_case_results_csv, write_results_csv

    _, _, reports = tiny_grid
    rows, cases = load_results(reports / "results.csv")
    parts = []
    for seed in (0, 1):
        part = tmp_path / f"seed{seed}"
        part.mkdir()
        write_results_csv([r for r in rows if int(r["seed"]) == seed], part / "results.csv")
        write_case_results_csv([c for c in cases if int(c["seed"]) == seed], part / "results_per_case.csv")
        (part / "machine.md").write_text(f"# How these results were made\n\n- part of seed {seed}\n")
        parts.append(part)
    combined = tmp_path / "combined"
    combine_reports(parts, combined)
    again, again_cases = load_results(combined / "results.csv")
    key = lambda r: (r["scenario"], r["method"], str(r["seed"]))  # noqa: E731
    assert sorted(map(key, again)) == sorted(map(key, rows)) and len(again_cases) == len(cases) > 0
    readme = (combined / "README.md").read_text()
    assert "part of seed 0" in readme and "part of seed 1" in readme and "Promise 1" in readme
    with pytest.raises(ValueError, match="seed0"):
        combine_reports([parts[0], parts[0]], tmp_path / "twice")


def run_in_parts_with_stand_in(tmp_path: Path, body: str, launcher: list[str], *workers: str,
                               **env: str) -> subprocess.CompletedProcess:
    """``scripts/run_in_parts.sh confirm2_40 /w /r [workers]`` started by ``launcher``, with a stand-in interpreter
    that answers the script's profile question with the real one and runs the shell line ``body`` for the rest."""
    stand_in = tmp_path / "python"
    stand_in.write_text(f'#!/bin/bash\nif [ "$1" = "-c" ]; then exec {sys.executable} "$@"; fi\n{body}\n')
    stand_in.chmod(0o755)
    return subprocess.run([*launcher, "scripts/run_in_parts.sh", "confirm2_40", "/w", "/r", *workers], cwd=REPO_ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHON": str(stand_in), **env}, timeout=120)


def test_run_in_parts_runs_each_scenario_of_the_profile_in_its_order_with_a_report_of_its_own(tmp_path):
    """``scripts/run_in_parts.sh`` with a stand-in interpreter that answers the profile question and prints the rest."""
    from transrisk_components.experiments import PROFILES

    done = run_in_parts_with_stand_in(tmp_path, 'echo "RUN $*"', ["bash"], "3")
    runs = [line for line in done.stdout.splitlines() if line.startswith("RUN ")]
    assert done.returncode == 0 and len(runs) == len(PROFILES["confirm2_40"].scenarios), done.stdout + done.stderr
    for line, scenario in zip(runs, PROFILES["confirm2_40"].scenarios):
        assert line == (f"RUN scripts/reproduce.py run --profile confirm2_40 --work_dir /w --workers 3 --scenarios {scenario} "
                        f"--report_dir /r/report_{scenario}")


@pytest.mark.skipif(not Path("/proc/self/autogroup").is_file() or shutil.which("setsid") is None,
                    reason="the kernel has no autogroups, or there is no setsid")
def test_run_in_parts_as_a_session_of_its_own_lowers_its_sessions_cpu_weight(tmp_path):
    """Started with ``setsid``, the script sets its autogroup's nice to 19 (``nice`` alone orders processes only within
    a session); the stand-in interpreter reports the autogroup it runs in."""
    done = run_in_parts_with_stand_in(tmp_path, 'echo "GROUP $(cat /proc/self/autogroup)"', ["setsid", "--wait", "bash"],
                                      SCENARIOS="fets_ed_to_et")
    groups = [line for line in done.stdout.splitlines() if line.startswith("GROUP ")]
    assert done.returncode == 0 and len(groups) == 1, done.stdout + done.stderr
    assert groups[0].endswith(" nice 19"), groups
