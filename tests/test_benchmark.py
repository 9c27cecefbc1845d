"""Every ``scripts/benchmark.py`` subcommand runs at tiny size (tiny volumes, one repeat) and ends with its summary
line. Nothing here times anything: the figures are the script's to print, not the tests' to judge."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from bundle_helpers import TINY


REPO = Path(__file__).resolve().parents[1]
NUMBER = r"\d+\.\d+"


def benchmark(*args: str) -> list[str]:
    """``python scripts/benchmark.py ARGS`` from the repository root (this checkout's package); its stdout lines."""
    done = subprocess.run(
        [sys.executable, "scripts/benchmark.py", *args], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done.stdout.strip().splitlines()


def tiny(phantom: str, **more: object) -> str:
    """The bundle tests' tiny settings on ``phantom``, as the JSON ``--overrides`` of a subcommand."""
    return json.dumps({**TINY, "dataset_dir": phantom, **more})


def test_core_runs_and_ends_with_its_ratios() -> None:
    lines = benchmark("core", "--size", "16", "--repeats", "1")
    assert re.fullmatch(rf"core: LEEP\+T/forward = {NUMBER}, weighted/DiceCE step = {NUMBER}", lines[-1]), lines[-1]


def test_bundle_prints_its_three_ratios_with_targets(data_fets_phantom_9: str) -> None:
    """weighted/plain step, risk stage/inference pass and the bundles' own safe_training over one fine-tuning run."""
    lines = benchmark("bundle", "--repeats", "1", "--steps", "1", "--run_epochs", "1",
                      "--overrides", tiny(data_fets_phantom_9))
    assert any("(target <= 1.01)" in line for line in lines) and any("(target <= 1.2)" in line for line in lines)
    assert any(line.startswith("(a)") and "95% CI over the 1 rounds: nan to nan" in line for line in lines), "no CI of one round"
    assert re.fullmatch(
        rf"bundle: weighted/plain step = {NUMBER}, risk stage/inference pass = {NUMBER}, safe/one run = {NUMBER}",
        lines[-1],
    ), lines[-1]


def test_headline_prints_a_stage_table_that_adds_up_to_its_total(data_fets_phantom_9: str, tmp_path: Path) -> None:
    from script_helpers import load_script

    HEADLINE_STAGES = load_script("benchmark").HEADLINE_STAGES

    lines = benchmark("headline", "--overrides", tiny(data_fets_phantom_9, **{"safe#enabled": True}),
                      "--work_dir", str(tmp_path))
    match = re.fullmatch(rf"headline: total = ({NUMBER}) s \(target <= 300 s on 2 CPU cores\), safe/one run = "
                         rf"({NUMBER}) \(target <= 1\.5\)", lines[-1])
    assert match, lines[-1]
    rows = {m.group(1): float(m.group(2)) for line in lines if (m := re.fullmatch(rf"\| (.+) \| ({NUMBER}) s \| \d+% \|", line))}
    assert set(rows) == {*HEADLINE_STAGES, "total"}
    # at tiny size a stage can take less than the table's 0.01 s resolution: the rows must be there and add up
    assert all(value >= 0 for value in rows.values()) and rows["total"] > 0
    assert sum(rows[name] for name in HEADLINE_STAGES) == pytest.approx(rows["total"], abs=0.01 * len(HEADLINE_STAGES))
    assert (tmp_path / "bundle" / "models" / "model.pt").is_file(), "the headline ran to its end"
    assert (tmp_path / "bundle" / "eval" / "transfer_report.json").is_file(), "the safe headline"
    assert not (tmp_path / "bundle_one_run" / "eval" / "transfer_report.json").exists(), "and the one run beside it"


@pytest.mark.slow
def test_scale_ends_with_the_peak_rss_ratio(data_fets_phantom_9: str, tmp_path: Path) -> None:
    lines = benchmark("scale", "--phantom", data_fets_phantom_9, "--counts", "[1, 2]", "--cache_gb", "[0]", "--patch", "16",
                      "--work_dir", str(tmp_path))
    assert re.fullmatch(rf"scale: risk-stage peak RSS ratio N=2/N=1 = {NUMBER}", lines[-1]), lines[-1]


@pytest.mark.slow
def test_fullsize_ends_with_the_peak_rss_over_every_run_id(data_fets_phantom_9: str, tmp_path: Path) -> None:
    lines = benchmark("fullsize", "--phantom", data_fets_phantom_9, "--profile", "False", "--work_dir", str(tmp_path))
    assert re.fullmatch(rf"fullsize: peak RSS over all steps = {NUMBER} GB \(goal <= 6 GB\)", lines[-1]), lines[-1]


def test_the_prepared_gpu_check_runs_on_the_cpu_at_tiny_size_and_ends_with_its_figures(tmp_path: Path) -> None:
    """``scripts/gpu_check.sh`` (the device call of #34) with ``GPU_CHECK_TINY``: ``benchmark.py gpu`` on a 32^3
    phantom with the tests' tiny network; its summary under ``$OUT`` holds both loader settings and the last line."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_TINY": "1", "OUT": str(out), "PYTHONPATH": str(REPO)}
    done = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    summary = (out / "summary.txt").read_text().splitlines() if (out / "summary.txt").is_file() else []
    assert done.returncode == 0, "\n".join(summary) + done.stdout[-2000:] + done.stderr[-3000:]
    assert "num_workers 1:" in summary and "num_workers 0:" in summary, "the profile's loader setting and 0, both printed"
    assert sum("(goal >= 0.95)" in line for line in summary) == 4
    last_line = (
        rf"gpu: throughput with map/plain MONAI = {NUMBER} \(>= 0\.95\), safe/one run wall = {NUMBER} \(<= 1\.3\), "
        rf"peak GPU memory = nan GB"
    )
    assert re.fullmatch(last_line, summary[-1]) and re.fullmatch(last_line, done.stdout.strip().splitlines()[-1]), summary
