"""One run per output folder: an advisory lock that names its holder.

:class:`FolderLock` takes ``fcntl.flock`` on ``<folder>/.bundle.lock`` and writes the holder (pid, host,
start time, command) into it. The operating system drops the lock when the holding process ends, however it
ends (``kill -9`` included), so a lock left by a dead run is never in the way: the next run takes it and
rewrites the holder. A second run on the same folder while the first lives stops at once with an error naming
the holder. Within one process the lock is re-entrant (one bundle folder, several workflows in turn).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO

from transrisk_components.utils.distributed import is_rank0

__all__ = ["FolderBusyError", "FolderLock"]

LOCK_NAME = ".bundle.lock"

_HELD: dict[Path, IO[str]] = {}


class FolderBusyError(RuntimeError):
    """Another live process holds the folder's lock."""


class FolderLock:
    """Exclusive use of ``folder`` by this process (rank 0 under ``torch.distributed`` takes it for the job).

    Args:
        folder: the output folder (the bundle root).
        remedy: what else the user can do, for the error message (default: another ``--bundle_root``).
    """

    def __init__(self, folder: str | os.PathLike, remedy: str = "pass another --bundle_root") -> None:
        self.path = Path(folder).resolve() / LOCK_NAME
        self.remedy = remedy

    def acquire(self) -> Path:
        """Take the lock (no-op when this process holds it already, or on ranks other than 0); return its path.

        Raises:
            FolderBusyError: another live process holds it; the message names it and what to do.
        """
        if self.path in _HELD or not is_rank0():
            return self.path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "an unknown process"
            handle.close()
            raise FolderBusyError(
                f"{self.path.parent} is in use by another run ({holder}). Wait for it to finish, stop it, or "
                f"{self.remedy}. (The lock is released when that process ends, even if killed; "
                f"{self.path} itself need not be deleted.)"
            ) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join(sys.argv)[:300],
        }
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(holder))
        handle.flush()
        _HELD[self.path] = handle
        return self.path

    def release(self) -> None:
        """Drop the lock if this process holds it."""
        handle = _HELD.pop(self.path, None)
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
