"""Parity of two checkouts on the tests' tiny grid: the same cells, compared value by value.

Usage (from the repository root)::

    git worktree add /tmp/old <commit>
    python scripts/parity_tiny_grid.py --old /tmp/old --new . --work /tmp/parity

Each checkout runs the tiny profile of ``tests/grid_helpers.py`` (one scenario, the headline methods, two seeds, one
epoch per stage, a 12-subject 32^3 phantom made by the checkout itself) in a child process whose ``PYTHONPATH``
puts that checkout's ``transrisk_components`` first; the two ``results.csv`` are then compared row by row (scenario,
method, seed). The last line: ``parity: <n> cells, <k> differ, max |difference| = <d> Dice points``.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import subprocess
import sys
from pathlib import Path

GRID = """
import sys
from pathlib import Path
sys.path.insert(0, str(Path({checkout!r}) / "tests"))
from grid_helpers import TINY
from transrisk_components import experiments
from transrisk_components.data.registry import get_dataset
work, reports = Path({work!r}), Path({reports!r})
phantom = get_dataset("fets").make_phantom(work / "phantom", subjects=12, seed=0, shape=(32, 32, 32))
experiments.reproduce_profile("tiny", TINY, work / "grid", reports, {{"fets": str(phantom)}}, 1, command="parity")
"""

#: The columns compared (Dice in [0, 1]; ``chosen`` for safe-transfer rows).
VALUES = ("val_dice", "test_dice")


def run_grid(checkout: Path, work: Path) -> Path:
    """Run the tiny grid with ``checkout``'s package; return its ``results.csv``."""
    reports = work / "reports"
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{checkout}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    code = GRID.format(checkout=str(checkout), work=str(work), reports=str(reports))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=checkout)
    return reports / "results.csv"


def _rows(path: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return {(r["scenario"], r["method"], r["seed"]): r for r in csv.DictReader(handle)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True)
    parser.add_argument("--new", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    old = _rows(run_grid(args.old.resolve(), args.work / "old"))
    new = _rows(run_grid(args.new.resolve(), args.work / "new"))
    if set(old) != set(new):
        raise SystemExit(f"the grids made different cells: only old {sorted(set(old) - set(new))}, "
                         f"only new {sorted(set(new) - set(old))}")
    differing, largest = 0, 0.0
    for key in sorted(old):
        gaps = [abs(float(old[key][c]) - float(new[key][c])) for c in VALUES if old[key].get(c) and new[key].get(c)]
        gap = max(gaps, default=0.0)
        chosen_differs = old[key].get("chosen", "") != new[key].get("chosen", "")
        if gap > 0 or chosen_differs or math.isnan(gap):
            differing += 1
            print(f"{' / '.join(key)}: " + ", ".join(f"{c} {old[key][c]} -> {new[key][c]}" for c in VALUES)
                  + (f", chosen {old[key]['chosen']} -> {new[key]['chosen']}" if chosen_differs else ""))
        largest = max(largest, gap)
    print(f"parity: {len(old)} cells, {differing} differ, max |difference| = {100 * largest:.3g} Dice points")


if __name__ == "__main__":
    main()
