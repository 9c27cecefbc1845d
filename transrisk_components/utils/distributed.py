"""Rank queries that work with and without ``torch.distributed``.

Plain ``torch.distributed`` calls rather than ``ignite.distributed``: ignite's first rank query inside an
already initialised process group sets up its own group, a collective call that deadlocks when only rank 0
makes it.
"""

from __future__ import annotations

from typing import TypeVar

import torch.distributed as dist

__all__ = ["barrier", "broadcast_from_rank0", "is_distributed", "is_rank0", "rank_and_world", "shutdown_process_group"]

T = TypeVar("T")


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` without a process group."""
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def is_rank0() -> bool:
    """Whether this process is rank 0 (always true without a process group)."""
    return rank_and_world()[0] == 0


def barrier() -> None:
    """Wait for every rank; a no-op without a process group."""
    if is_distributed():
        dist.barrier()


def broadcast_from_rank0(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (a picklable object; every rank must call it); ``obj`` without a group."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown_process_group() -> None:
    """Wait for every rank, then destroy the default process group; a no-op without one.

    With gloo the wait is ``monitored_barrier``. A plain ``barrier`` keeps the collectives still in flight when it
    is queued, and gloo's worker thread releases them only after the caller has moved on. A gradient all-reduce of
    ``DistributedDataParallel`` carries the autograd engine's Python context: released on that thread once the
    interpreter has begun to shut down, it aborts the process ("terminate called without an active exception",
    SIGABRT) although the run succeeded. The wait, with the GIL released, also gives those threads the chance to
    release such works in time. This makes the abort rare but cannot rule it out (``scripts/ddp_exit_check.py``
    counts aborts for this and two other endings). Keep DDP modules alive until the process exits: one freed after
    this call can hang, joining gloo's threads while holding the GIL that one of them waits for.
    """
    if not is_distributed():
        return
    if dist.get_backend() == "gloo":
        dist.monitored_barrier()
    else:
        dist.barrier()
    dist.destroy_process_group()
