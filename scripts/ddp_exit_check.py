"""How often a two-process gloo DDP run aborts at exit, for three ways of ending the process group.

Each launch is ``torchrun --nproc_per_node 2`` of this file as a worker: a tiny ``DistributedDataParallel``
module takes three optimisation steps (it stays referenced until the process exits, as a bundle's config parser
keeps its ``network``); then the group is ended with ``destroy_process_group`` alone (what the bundles did until
0.4.1), with ``barrier`` then ``destroy_process_group``, or with
:func:`transrisk_components.utils.distributed.shutdown_process_group`. A launch fails when a rank exits non-zero
(the abort is "terminate called without an active exception", SIGABRT).

Usage (from the repository root; about 3 s per launch on 2 CPU cores)::

    python scripts/ddp_exit_check.py --launches 40
    # last line: ddp exit aborts: destroy <a>/<n>, barrier <b>/<n>, shutdown_process_group <c>/<n>
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import fire
import torch
import torch.distributed as dist

REPO_ROOT = Path(__file__).resolve().parents[1]
ENDINGS = ("destroy", "barrier", "shutdown_process_group")


def worker(ending: str) -> torch.nn.Module:
    """One rank: three DDP steps, then end the group as ``ending`` says (run under ``torchrun``).

    Returns the DDP module, for the caller to keep until the process exits.
    """
    from transrisk_components.utils.distributed import shutdown_process_group

    dist.init_process_group("gloo")
    network = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2))
    for _ in range(3):
        network(torch.randn(2, 4)).sum().backward()
    if ending == "shutdown_process_group":
        shutdown_process_group()
        return network
    if ending == "barrier":
        dist.barrier()
    dist.destroy_process_group()
    return network


def count_aborts(ending: str, launches: int, port: int = 29631) -> int:
    """How many of ``launches`` two-process launches ending the group as ``ending`` exit non-zero."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               str(Path(__file__).resolve()), "worker", ending]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    failures = 0
    for launch in range(launches):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        failures += result.returncode != 0
        print(f"{ending}: launch {launch + 1}/{launches}, {failures} aborted", file=sys.stderr, flush=True)
    return failures


def main(launches: int = 40) -> None:
    """Count the aborts of every ending over ``launches`` launches each and print them on the last line."""
    counts = {ending: count_aborts(ending, launches) for ending in ENDINGS}
    print("ddp exit aborts: " + ", ".join(f"{ending} {counts[ending]}/{launches}" for ending in ENDINGS))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "worker":
        kept_until_exit = worker(sys.argv[2])
    else:
        fire.Fire(main)
