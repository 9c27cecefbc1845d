"""The source-ranking study's summary (``experiments.ranking_report``, ``scripts/ranking_study.py``): Kendall's tau
of the LEEP ranking and the two comparison rankers, on a made-up table."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from transrisk_components.experiments.ranking_report import read_results, summarise

REPO = Path(__file__).resolve().parents[1]


def test_summary_files_and_last_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = tmp_path / "results.csv"
    with open(results, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["scenario", "candidate", "seed", "leep", "source_val_dice", "test_dice"])
        for scenario in ("t1_to_flair", "t2_to_flair"):
            for i, name in enumerate(["a", "b", "c", "d"]):
                for seed in range(3):
                    # LEEP orders the candidates as the test Dice does; the source's own Dice the other way round
                    writer.writerow([scenario, name, seed, -1.0 + 0.2 * i, 0.9 - 0.1 * i, 0.3 + 0.1 * i + 0.01 * seed])
    tau = summarise(str(results), str(tmp_path / "report"))
    assert tau == pytest.approx(1.0)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "ranking: kendall tau = 1.000 over 8 candidates"
    with open(tmp_path / "report" / "ranking_study.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["ranker"] for r in rows} == {"leep", "source_val_dice", "random"}
    assert all(float(r["kendall_tau"]) == pytest.approx(-1.0) for r in rows if r["ranker"] == "source_val_dice")
    assert "| mean | 8 |" in (tmp_path / "report" / "ranking_study.md").read_text()
    assert (tmp_path / "report" / "ranking_study.png").stat().st_size > 1000


def test_missing_column_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("scenario,candidate\nx,y\n")
    with pytest.raises(ValueError, match=r"bad.csv: missing columns"):
        read_results(bad)


def test_command_line_prints_the_tau_line_last(tmp_path: Path) -> None:
    import subprocess
    import sys

    results = tmp_path / "results.csv"
    results.write_text("scenario,candidate,seed,leep,source_val_dice,test_dice\n"
                       + "".join(f"s,{n},0,{-1 + 0.1 * i},0.5,{0.2 + 0.1 * i}\n" for i, n in enumerate("abcd")))
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "ranking_study.py"), "summarise", "--results",
                          str(results), "--report_dir", str(tmp_path / "report")],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip().splitlines()[-1] == "ranking: kendall tau = 1.000 over 4 candidates"
