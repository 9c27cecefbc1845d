"""The README's first command, ``bash scripts/quickstart.sh``, on a copy of the repository's files with no virtual
environment: it makes one, installs transrisk and runs safe transfer on the built-in phantom (tiny settings passed
through to ``monai.bundle run training``)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_ARGUMENTS = ["--network_def#init_filters", "4", "--network_def#blocks_down", "[1,2]", "--network_def#blocks_up", "[1]",
                  "--patch_size", "[16,16,16]", "--source_epochs", "1", "--max_epochs", "2", "--val_interval", "1",
                  "--num_source", "3", "--num_target_train", "2", "--num_target_val", "1", "--num_target_test", "1",
                  "--progress", "false"]


@pytest.mark.slow
def test_the_quickstart_sets_up_and_runs_the_headline_alone(tmp_path: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.decode()
    clone = tmp_path / "transrisk"
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    assert not (clone / ".venv").exists()
    done = subprocess.run(["bash", "scripts/quickstart.sh", *TINY_ARGUMENTS], cwd=clone, capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    bundle = clone / "bundles" / "fets"
    assert (clone / ".venv" / "bin" / "python").is_file()
    assert (bundle / "models" / "model.pt").is_file() and (bundle / "eval" / "transfer_report.png").is_file()
    report = json.loads((bundle / "eval" / "transfer_report.json").read_text(encoding="utf-8"))
    assert report["chosen"] in report["candidates"] and report["validation_cases"] == 1 and report["uncertain"]
    assert "safe transfer, validation Dice (%) on 1 cases" in done.stdout + done.stderr
