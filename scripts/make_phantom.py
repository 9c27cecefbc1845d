"""Generate look-alike FeTS2021 / iSeg-2019 data in the native layouts.

Examples::

    python scripts/make_phantom.py fets --out /tmp/ph --subjects 40 --seed 0 --preview
    python scripts/make_phantom.py iseg --out /tmp/ph --shape 32,32,32
    python scripts/make_phantom.py fets --out /tmp/full --subjects 2 --full_size
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire

from transrisk_components.data.phantom import make_phantom
from transrisk_components.reporting.phantom_preview import write_preview


def main(
    dataset: str,
    out: str,
    subjects: int | None = None,
    seed: int = 0,
    shape: tuple[int, int, int] | None = None,
    full_size: bool = False,
    preview: bool = False,
    overwrite: bool = True,
    **options,
) -> None:
    """Write a phantom of DATASET ("fets" or "iseg") under OUT and print its root.

    Args:
        dataset: "fets" or "iseg".
        out: parent folder; the dataset root is OUT/MICCAI_FeTS2021_TrainingData or OUT/iSeg-2019-Training.
        subjects: number of subjects (default: the bundles' default phantom size).
        seed: random seed; the same seed gives byte-identical voxels.
        shape: grid as X,Y,Z (default 64,64,64); the field of view stays fixed.
        full_size: real size instead (240x240x155 / 144x192x256 at 1 mm).
        preview: also write OUT/<dataset>_phantom_preview.png.
        overwrite: replace an existing phantom under OUT (real data is never replaced).
        options: dataset-specific, e.g. --institutions 3 (fets) or --labelled 10 (iseg).
    """
    root = make_phantom(dataset, out, subjects, seed, shape=shape, full_size=full_size, overwrite=overwrite, **options)
    print(f"dataset root: {root}")
    if preview:
        png = write_preview(root, dataset, Path(out).expanduser().resolve() / f"{dataset}_phantom_preview.png")
        print(f"preview: {png}")


if __name__ == "__main__":
    try:
        fire.Fire(main)
    except (ValueError, FileExistsError) as error:  # an unknown dataset, a bad size, real data in the way
        sys.exit(f"make_phantom.py: {error}")
