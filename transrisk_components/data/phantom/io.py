"""Atomic output for the phantoms: a killed generation never leaves a dataset that looks complete.

A dataset is written into a hidden temporary sibling folder and moved into place with ``os.replace``
only once complete. A marker file identifies phantom folders, so an existing phantom may be replaced,
while a folder without the marker (real data, for instance) is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

__all__ = ["MARKER", "atomic_dataset_dir", "atomic_file"]

#: File written into every phantom root, holding the generation parameters as JSON.
MARKER = ".transrisk_phantom.json"


@contextmanager
def atomic_dataset_dir(target: Path, params: Mapping, overwrite: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it becomes ``target`` (with the marker file).

    Args:
        target: final dataset root (e.g. ``out/MICCAI_FeTS2021_TrainingData``).
        params: generation parameters stored in the marker (JSON-serialisable).
        overwrite: replace an existing phantom at ``target``; if false, an existing one is an error.

    Raises:
        FileExistsError: ``target`` exists and is not a phantom, or ``overwrite`` is false.
    """
    target = Path(target)
    if target.exists():
        if not (target / MARKER).is_file():
            raise FileExistsError(
                f"{target} exists and is not a transrisk phantom (no {MARKER}); refusing to replace it"
            )
        if not overwrite:
            raise FileExistsError(f"phantom {target} already exists; pass overwrite=True to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield tmp
        (tmp / MARKER).write_text(json.dumps(dict(params), indent=2, sort_keys=True) + "\n")
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` (same suffix); it replaces ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.stem}.partial-", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
