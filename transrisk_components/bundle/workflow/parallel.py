"""Safe-transfer candidates side by side: each candidate's fine-tuning stage in a child process of its own.

``safe#workers`` says how many run at once (:func:`resolve_workers`). Each child is a fresh Python process (``spawn``:
nothing of the parent's torch state is inherited), sees one device (``CUDA_VISIBLE_DEVICES``, one GPU per slot, the
slots spread over the visible GPUs), uses its share of the CPU threads, writes its log to its candidate folder and runs
the stage exactly as the serial run would (:meth:`~transrisk_components.bundle.workflow.stage.StageConfig.run`: a fresh
workflow from the stage's seed), so the choice does not depend on how many ran at once. The parent keeps the records:
it marks each stage started before its child runs and finished when it returned; a candidate that fails is named with
its log, and the others are finished and kept (a re-run resumes the failed one alone).
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from transrisk_components.bundle.workflow.stage import StageConfig

__all__ = ["CandidateFailedError", "ParallelJob", "resolve_workers", "run_side_by_side"]

logger = logging.getLogger(__name__)


class CandidateFailedError(RuntimeError):
    """One or more candidates failed in their child processes (each named with its log); the others were kept."""


@dataclass(frozen=True)
class ParallelJob:
    """One candidate's fine-tuning to run in a child process.

    Attributes:
        name: the candidate's name.
        config: its fine-tuning stage.
        log: where the child's output goes (its candidate folder).
    """

    name: str
    config: StageConfig
    log: Path


def resolve_workers(setting: str | int, candidates: int, gpus: int | None = None, cpus: int | None = None) -> int:
    """How many candidates run at once.

    Args:
        setting: ``safe#workers``: ``"auto"`` or a number >= 1.
        candidates: how many candidates are to be trained.
        gpus: visible GPUs (default ``torch.cuda.device_count()``).
        cpus: CPU cores (default ``os.cpu_count()``).

    ``auto``: on CPU one at a time (a training step already uses every core); on several GPUs one candidate per GPU;
    on one GPU as many as the CPU cores feed at four cores each (a small network leaves most of the GPU idle; not
    measured yet on a GPU, see ``docs/benchmarks.md``). Never more than the candidates.
    """
    gpus = torch.cuda.device_count() if gpus is None else gpus
    cpus = (os.cpu_count() or 1) if cpus is None else cpus
    if setting == "auto":
        wanted = 1 if gpus == 0 else gpus if gpus > 1 else max(1, cpus // 4)
    else:
        wanted = int(setting)
    return max(1, min(wanted, candidates))


def _run_in_child(config: StageConfig, device: int | None, threads: int, log: str) -> None:
    """The child process: one device, its share of the threads, output to ``log``; run the stage."""
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(device)
    torch.set_num_threads(threads)
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", buffering=1, encoding="utf-8") as stream:
        sys.stdout = sys.stderr = stream
        logging.basicConfig(stream=stream, level=logging.INFO, format="%(asctime)s - %(levelname)s - %(message)s",
                            force=True)
        try:
            config.run()
        except BaseException as error:  # the traceback stays in the log; the parent gets a picklable summary
            traceback.print_exc(file=stream)
            raise RuntimeError(f"{type(error).__name__}: {error}") from None


_EPOCH = re.compile(rb"Epoch: (\d+)/(\d+)")


def _progress(log: Path, tail: int = 65536) -> str:
    """``"epoch k/N"`` from the last epoch line of a child's log (Ignite's ``StatsHandler`` lines), or ``"starting"``."""
    try:
        with open(log, "rb") as stream:
            stream.seek(max(0, log.stat().st_size - tail))
            found = _EPOCH.findall(stream.read())
    except OSError:
        found = []
    return f"epoch {int(found[-1][0])}/{int(found[-1][1])}" if found else "starting"


def _device_slots(workers: int, gpus: int) -> list[int | None]:
    """One device per worker slot: the visible GPUs in turn, or ``None`` (CPU)."""
    return [index % gpus if gpus else None for index in range(workers)]


def run_side_by_side(
    jobs: Sequence[ParallelJob],
    workers: int,
    started: Callable[[ParallelJob], None],
    finished: Callable[[ParallelJob], None],
    gpus: int | None = None,
    progress_seconds: float = 60.0,
) -> None:
    """Run ``jobs`` in up to ``workers`` child processes at once, logging every ``progress_seconds`` the epoch each
    running candidate has reached.

    Args:
        jobs: the candidates' fine-tuning stages, in candidate order (the order they start in).
        workers: how many at once (:func:`resolve_workers`).
        started: called in this process just before a job's child starts (marks its stage started).
        finished: called in this process when a job's child returned (marks its stage finished).
        gpus: visible GPUs (default ``torch.cuda.device_count()``).
        progress_seconds: seconds between two progress lines.

    Raises:
        CandidateFailedError: after every job ended, naming each failed candidate, its error and its log.
    """
    gpus = torch.cuda.device_count() if gpus is None else gpus
    threads = max(1, (os.cpu_count() or 1) // workers)
    free = _device_slots(workers, gpus)
    waiting = list(jobs)
    running: dict[concurrent.futures.Future, tuple[ParallelJob, int | None, float, concurrent.futures.Executor]] = {}
    failed: list[str] = []
    context = multiprocessing.get_context("spawn")
    try:
        while waiting or running:
            while waiting and free:
                job, device = waiting.pop(0), free.pop(0)
                started(job)
                where = f"GPU {device}" if device is not None else f"CPU, {threads} thread(s)"
                logger.info("candidate %s: started in its own process (%s; log %s)", job.name, where, job.log)
                # a fresh process per candidate: a process that has initialised CUDA keeps its device
                child = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context)
                future = child.submit(_run_in_child, job.config, device, threads, str(job.log))
                running[future] = (job, device, time.monotonic(), child)
            done, _ = concurrent.futures.wait(running, timeout=progress_seconds,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            if not done:
                logger.info("candidates side by side: %s", ", ".join(
                    f"{job.name} {_progress(job.log)}" for job, _, _, _ in running.values()))
            for future in done:
                job, device, start, child = running.pop(future)
                child.shutdown(wait=True)
                free.append(device)
                error = future.exception()
                if error is None:
                    finished(job)
                    logger.info("candidate %s: finished in %.0f s", job.name, time.monotonic() - start)
                else:
                    failed.append(f"candidate {job.name} failed ({error}); its log: {job.log}")
                    logger.error("candidate %s failed: %s (log %s)", job.name, error, job.log)
    finally:
        for _, _, _, child in running.values():  # stopped (e.g. Ctrl-C): the children end with this process
            child.shutdown(wait=False, cancel_futures=True)
    if failed:
        raise CandidateFailedError(
            "; ".join(failed) + ". The other candidates finished and are kept: fix the cause and re-run the same "
            "command, which resumes the failed candidate(s) alone")
