"""Atomic file writes and content hashes: a killed run never leaves a half-written output behind.

A write goes to ``.<name>.partial-<random><suffix>`` next to the final file and is renamed onto it when
complete. The temporary file is created with the user's normal permissions (``0o666`` minus the umask, as
``open()`` does), not ``mkstemp``'s private ``0o600``, so colleagues sharing a server can read the outputs. A
process killed mid-write leaves such a ``.partial-`` file behind; :func:`remove_partial_writes` clears them on
the next run (call it only while holding the folder's lock, so no live writer is disturbed).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_text",
    "file_sha256",
    "load_checkpoint",
    "remove_partial_writes",
]

logger = logging.getLogger(__name__)

PARTIAL = ".partial-"


def _new_partial_file(path: Path, suffix: str) -> Path:
    """Create an empty, not yet existing temporary file next to ``path`` with mode ``0o666 & ~umask``."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}{PARTIAL}{secrets.token_hex(4)}{suffix}")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"cannot create a temporary file next to {path}")


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any], suffix: str = "") -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it onto ``path``.

    Args:
        path: final file path (its folder is created).
        write: writes the file at the path it receives.
        suffix: suffix of the temporary file, for writers that infer the format from it (``".nii.gz"``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_partial_file(path, suffix)
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` atomically."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: str | os.PathLike, remedy: str, **load_args: Any) -> Any:
    """``torch.load(path, **load_args)``, with an error that names the file and the way on when it is unreadable.

    Args:
        path: checkpoint file.
        remedy: what the user can do, e.g. ``"delete it and rerun with --overwrite true"``.
        load_args: ``torch.load`` arguments (``map_location``, ``weights_only``).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a readable checkpoint (random bytes, truncated); names ``path`` and ``remedy``.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, **load_args)
    except Exception as err:  # torch raises many types for damaged files: EOFError, RuntimeError, UnpicklingError
        raise ValueError(
            f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); the file is corrupt or truncated, "
            f"e.g. by a run killed while writing it: {remedy}"
        ) from err


def remove_partial_writes(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed :func:`atomic_write` calls left under ``folder``; return them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    orphans = [p for p in folder.rglob(f".*{PARTIAL}*") if p.is_file()]
    for orphan in orphans:
        orphan.unlink(missing_ok=True)
    if orphans:
        logger.info("removed %d partial file(s) of an interrupted run under %s", len(orphans), folder)
    return orphans


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
