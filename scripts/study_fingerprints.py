"""Digest of the fine-tuning fingerprints a grid profile's cells resolve to now (nothing is trained or written).

Run it from two checkouts over the same work folder: equal digests mean a grid run at either commit reuses the
other's finished cells (``runner._check_reuse`` compares exactly these fingerprints), e.g.
``python scripts/study_fingerprints.py --profile confirm2_40 --work_dir /work/runs/confirm2_40/work --seed 200``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import fire

from transrisk_components.experiments.cells import grid
from transrisk_components.experiments.profiles import PROFILES
from transrisk_components.experiments.runner import finetune_fingerprint, prepare_phantoms


def main(profile: str, work_dir: str, seed: int | None = None) -> None:
    """Print ``<cells> cells, fingerprints sha256 <digest>`` for the profile's cells (of ``seed`` only, if given).

    Args:
        profile: a profile of ``transrisk_components/experiments/profiles.py``.
        work_dir: the grid's work folder (its phantoms are made there if missing, as the grid would).
        seed: only the cells of this seed.
    """
    chosen = PROFILES[profile]
    root = Path(work_dir)
    dirs = prepare_phantoms(chosen, root, {})
    cells = [c for c in grid(chosen) if seed is None or c.seed == seed]
    fingerprints = {f"{c.scenario.name}|{c.method.id}|{c.seed}": finetune_fingerprint(c, root, chosen, dirs) for c in cells}
    text = json.dumps(fingerprints, sort_keys=True, default=str)
    print(f"{len(cells)} cells, fingerprints sha256 {hashlib.sha256(text.encode()).hexdigest()}")


if __name__ == "__main__":
    fire.Fire(main)
