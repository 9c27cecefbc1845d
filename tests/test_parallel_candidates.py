"""Safe-transfer candidates side by side (``safe#workers``): child processes make the choice and the metrics of the
serial run; a failing candidate is named with its log and the others are kept; the worker count is resolved as
documented."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from bundle_helpers import TINY, exception_messages, run_bundle

from transrisk_components.bundle.workflow.parallel import ParallelJob, resolve_workers, run_side_by_side
from transrisk_components.utils.io import file_sha256

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {**TINY, "safe#enabled": True, "num_target_val": 2, "max_epochs": 2}


def _run(root: Path, phantom: str, **overrides) -> None:
    run_bundle(REPO / "bundles" / "fets" / "configs", "training", root, phantom, SETTINGS, **overrides)


def _report(root: Path) -> dict:
    return json.loads((root / "eval" / "transfer_report.json").read_text())


@pytest.mark.parametrize(("setting", "gpus", "cpus", "expected"), [
    ("auto", 0, 2, 1), ("auto", 0, 64, 1), ("auto", 4, 16, 3), ("auto", 2, 16, 2), ("auto", 1, 16, 3), ("auto", 1, 4, 1),
    (2, 0, 2, 2), (8, 0, 2, 3),
])
def test_workers_auto_is_one_on_cpu_one_per_gpu_and_never_more_than_the_candidates(setting, gpus, cpus, expected) -> None:
    assert resolve_workers(setting, 3, gpus=gpus, cpus=cpus) == expected


def test_candidates_side_by_side_choose_as_the_serial_run(tmp_path: Path, fets_phantom: str) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the children of two workers on two cores use one thread each: the same arithmetic
    try:
        _run(tmp_path / "serial", fets_phantom, **{"safe#workers": 1})
    finally:
        torch.set_num_threads(threads)
    _run(tmp_path / "parallel", fets_phantom, **{"safe#workers": 2})
    serial, parallel = _report(tmp_path / "serial"), _report(tmp_path / "parallel")
    assert parallel["chosen"] == serial["chosen"]
    for name, entry in serial["candidates"].items():
        assert parallel["candidates"][name]["regions"] == pytest.approx(entry["regions"], abs=1e-3), name
        log = tmp_path / "parallel" / "eval" / "candidates" / name / "train.log"
        assert log.is_file() and "Epoch" in log.read_text(), "each child writes its own log"
    records = [json.loads((tmp_path / "parallel" / "models" / "candidates" / n / "finetune.fingerprint.json").read_text())
               for n in serial["candidates"]]
    assert all(r["complete"] for r in records)


def test_a_failing_candidate_is_named_and_the_others_are_kept(tmp_path: Path, fets_phantom: str) -> None:
    candidates = {"plain": {"risk#enabled": False}, "broken": {"risk#enabled": False, "train#dataloader#batch_size": -1}}
    with pytest.raises(Exception) as error:
        _run(tmp_path, fets_phantom, **{"safe#workers": 2, "safe#candidates": candidates})
    message = exception_messages(error.value)
    assert "candidate broken failed" in message and str(tmp_path / "eval" / "candidates" / "broken" / "train.log") in message
    assert "candidate plain" not in message.split("The other candidates")[0]
    plain = tmp_path / "models" / "candidates" / "plain"
    assert json.loads((plain / "finetune.fingerprint.json").read_text())["complete"], "the finished candidate is kept"
    kept = file_sha256(plain / "model.pt")
    with pytest.raises(Exception):  # re-run: plain is reused, broken runs (and fails) again
        _run(tmp_path, fets_phantom, **{"safe#workers": 2, "safe#candidates": candidates})
    assert file_sha256(plain / "model.pt") == kept


def test_progress_names_the_epoch_each_child_reached(tmp_path: Path) -> None:
    from transrisk_components.bundle.workflow.parallel import _progress

    log = tmp_path / "train.log"
    assert _progress(log) == "starting"
    log.write_text("INFO - Epoch: 3/10, Iter: 2/2 -- loss: 0.5\nINFO - Epoch: 4/10, Iter: 1/2 -- loss: 0.4\n")
    assert _progress(log) == "epoch 4/10"


@dataclass(frozen=True)
class _RecordsItsProcess:
    """Stands in for a stage config: ``run()`` writes the child's process id to ``path``."""

    path: str

    def run(self) -> None:
        Path(self.path).write_text(str(os.getpid()))


def test_each_candidate_runs_in_a_fresh_process(tmp_path: Path) -> None:
    """Three candidates on two workers: three processes (a process that initialised CUDA would keep its device)."""
    jobs = [ParallelJob(name, _RecordsItsProcess(str(tmp_path / name)), tmp_path / f"{name}.log") for name in "abc"]
    started, finished = [], []
    run_side_by_side(jobs, 2, lambda job: started.append(job.name), lambda job: finished.append(job.name), gpus=0)
    assert started == ["a", "b", "c"] and sorted(finished) == ["a", "b", "c"]
    pids = {(tmp_path / name).read_text() for name in "abc"}
    assert len(pids) == 3 and str(os.getpid()) not in pids
