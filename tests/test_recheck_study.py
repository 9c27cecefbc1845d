"""``scripts/recheck_study.py``: the committed confirm2 parts replay from their per-case CSVs, and a tampered copy does not."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from script_helpers import load_script

EPOCHS40 = Path(__file__).resolve().parents[1] / "docs" / "results" / "confirm2" / "epochs40"
PARTS = sorted(EPOCHS40.glob("part_*"))
recheck = load_script("recheck_study")


def _copy_of_first_part(tmp_path: Path) -> Path:
    part = tmp_path / "part"
    shutil.copytree(PARTS[0], part, ignore=shutil.ignore_patterns("figures"))
    return part


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize("report", [*PARTS, EPOCHS40], ids=[p.name for p in [*PARTS, EPOCHS40]])
def test_every_committed_report_replays_without_a_mismatch(report: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenarios = 1 if report.name.startswith("part_") else len(PARTS)  # the combined report holds every part
    assert recheck.main(str(report)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"recheck: {105 * scenarios} choices replayed, 0 mismatches"  # 15 seeds x 7 choices each
    assert sum("table.md" in line for line in lines) == 4 * scenarios  # the hypothesis comparisons beside the table's


def test_a_derived_row_that_is_not_the_replayed_choice_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    part = _copy_of_first_part(tmp_path)
    rows = _read_rows(part / "results_per_case.csv")
    scenario, seed = rows[0]["scenario"], rows[0]["seed"]
    for row in rows:  # safe_ensemble of one seed gets the test Dice of a case it did not have
        if row["method"] == "safe_ensemble" and row["seed"] == seed:
            row["dice"] = str(float(row["dice"]) * 0.5)
            break
    _write_rows(part / "results_per_case.csv", rows)
    assert recheck.main(str(part)) == 1
    out = capsys.readouterr().out
    assert f"MISMATCH {scenario} seed {seed}: safe_ensemble is not its replayed choice" in out
    assert out.splitlines()[-1].endswith(" mismatches") and not out.splitlines()[-1].endswith(" 0 mismatches")


def test_a_missing_candidate_of_a_choice_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    part = _copy_of_first_part(tmp_path)
    rows = _read_rows(part / "validation_per_case.csv")
    seed = rows[0]["seed"]
    kept = [r for r in rows if not (r["method"] == "ensemble_top2" and r["seed"] == seed)]
    assert len(kept) < len(rows)
    _write_rows(part / "validation_per_case.csv", kept)
    assert recheck.main(str(part)) == 1
    assert f"seed {seed}: no validation Dice of ['ensemble_top2'], which safe_ensemble chooses among" in capsys.readouterr().out


def test_a_seed_without_any_test_rows_of_a_compared_method_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    part = _copy_of_first_part(tmp_path)
    rows = _read_rows(part / "results_per_case.csv")
    seed = rows[0]["seed"]
    kept = [r for r in rows if not (r["method"] in ("plain", "plain_x3") and r["seed"] == seed)]
    _write_rows(part / "results_per_case.csv", kept)
    assert recheck.main(str(part)) == 1  # a clear line for each gap, no traceback
    out = capsys.readouterr().out
    assert f"seed {seed}: no test Dice of ['plain'], which the better_of_plain_scratch oracle needs" in out
    assert f"seed {seed}: no test Dice of ['plain_x3'], which the hypotheses compare" in out
