"""Fingerprint records on disk: which outputs the bundle made, and the errors that guard them.

Every stage output the bundle writes (``models/source.pt``, ``models/model.pt``, a candidate's folder, ...) is named
by a *record*, ``<stage>.fingerprint.json`` beside it, that holds what made it (see
:mod:`transrisk_components.bundle.workflow.fingerprint`) and the list of outputs it names (``"outputs"``, relative to
the record's folder). A file no record of ours names -- a checkpoint the user brought, a Model Zoo download's
``models/model.pt`` -- is not the bundle's: no stage deletes or changes it, whatever ``--overwrite`` says
(:class:`ForeignOutputError`). An output of ours made with other settings than the current run's is not reused
(:class:`StaleOutputError`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transrisk_components.utils.io import atomic_write_text

__all__ = [
    "ForeignOutputError",
    "RECORD_SUFFIX",
    "StaleOutputError",
    "datalist_files",
    "file_identity",
    "named_by_a_record",
    "read_record",
    "write_record",
]

#: File name ending of a stage's fingerprint record (``<stage>.fingerprint.json``, ``source.fingerprint.json``).
RECORD_SUFFIX = ".fingerprint.json"
#: Key of a record that lists the outputs it names (records written before 0.5.0 have none).
OUTPUTS = "outputs"
_FILE_KEYS = ("image", "label")


class StaleOutputError(RuntimeError):
    """A stage's outputs on disk were made with other settings or inputs than the current run's."""


class ForeignOutputError(StaleOutputError):
    """Files sit where a stage would write, and no fingerprint record of ours names them: the bundle did not make
    them, so it never deletes or changes them."""


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """A fingerprint record of ours (a JSON object with ``stage`` and ``version``), or ``None``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and {"stage", "version"} <= set(data) else None


def write_record(path: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write a record atomically (sorted keys, so that equal records are equal files; values JSON cannot hold, such
    as paths, as their text)."""
    return atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")


def _names(record_path: Path, record: Mapping[str, Any], path: Path) -> bool:
    """Whether ``record`` (read from ``record_path``) names ``path``: one of its outputs, or inside an output folder.

    A record written before 0.5.0 lists no outputs; it is taken to name everything in its own folder (those versions
    wrote records only beside their own outputs).
    """
    folder = record_path.resolve().parent
    listed = record.get(OUTPUTS)
    if listed is None:
        return folder == path or folder in path.parents
    for name in listed:
        output = (folder / name).resolve()
        if output == path or output in path.parents:
            return True
    return False


def named_by_a_record(path: str | os.PathLike, records: Sequence[str | os.PathLike] = ()) -> bool:
    """Whether the bundle made ``path``: a fingerprint record of ours names it.

    The records looked at are the ``*.fingerprint.json`` files in ``path``'s own folder (records sit beside their
    outputs) and ``records``.
    """
    target = Path(path).resolve()
    candidates = {p.resolve() for p in target.parent.glob(f"*{RECORD_SUFFIX}")} | {Path(r).resolve() for r in records}
    for record_path in sorted(candidates):
        record = read_record(record_path) if record_path.is_file() else None
        if record is not None and _names(record_path, record, target):
            return True
    return False


def datalist_files(datalist: Sequence[Mapping[str, Any]]) -> list[str]:
    """The image and label file paths of a datalist (``image`` may be a list, one path per channel)."""
    files: list[str] = []
    for case in datalist:
        for key in _FILE_KEYS:
            value = case.get(key)
            if value is None:
                continue
            files.extend(str(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    return files


def file_identity(path: str | os.PathLike) -> str:
    """``"size=<bytes> mtime_ns=<ns>"`` of a file, or ``"missing"``."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return "missing"
    return f"size={stat.st_size} mtime_ns={stat.st_mtime_ns}"
