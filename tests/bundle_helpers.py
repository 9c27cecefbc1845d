"""Helpers shared by the bundle tests: run one run id through ``ConfigWorkflow`` and read its outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigWorkflow


def run_bundle(
    configs_dir: Path,
    run_id: str,
    bundle_root: Path,
    dataset_dir: str,
    settings: Mapping[str, Any],
    configs: Sequence[str] = ("train.json",),
    **overrides: Any,
) -> ConfigWorkflow:
    """Initialise and run ``run_id`` of the bundle configs ``configs`` with ``settings`` and ``overrides``.

    ``dataset_dir`` is the training data of ``train.json``; ``inference.json`` alone keeps its own default (the
    folder of the training run's ``splits.json``).
    """
    files = [str(configs_dir / name) for name in configs]
    data = {"dataset_dir": dataset_dir} if "train.json" in configs else {}
    values = {**settings, "bundle_root": str(bundle_root), **data, **overrides}
    workflow = ConfigWorkflow(config_file=files, run_id=run_id, logging_file=False, workflow_type=None, **values)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return workflow


def exception_messages(error: BaseException | None) -> str:
    """The messages of an exception and its causes (MONAI wraps errors raised while instantiating)."""
    texts = []
    while error is not None:
        texts.append(str(error))
        error = error.__cause__
    return "\n".join(texts)


def risk_maps(bundle_root: Path) -> list[Path]:
    """The cached risk maps of a bundle folder, every cache key."""
    return sorted((bundle_root / "outputs" / "risk_maps").glob("*/*_risk.nii.gz"))


def run_ddp_training(
    configs_dir: Path, bundle_root: Path, dataset_dir: str, settings: Mapping[str, Any], port: int
) -> None:
    """``torchrun`` the bundle's ``training`` with ``multi_gpu_train.json`` on 2 gloo processes; assert success."""
    configs = json.dumps([str(configs_dir / "train.json"), str(configs_dir / "multi_gpu_train.json")])
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
        "-m", "monai.bundle", "run", "training", "--config_file", configs,
        "--bundle_root", str(bundle_root), "--dataset_dir", dataset_dir,
    ]
    for key, value in settings.items():
        command += [f"--{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=bundle_root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def run_headline_from_fresh_clone(repo: Path, tmp_path: Path, bundle: str) -> Path:
    """``git clone`` ``repo`` and run ``python -m monai.bundle run training`` on the bundle as the README says.

    Returns the clone's bundle folder; asserts that nothing was written to the clone's root.
    """
    clone = tmp_path / "transrisk"
    subprocess.run(["git", "clone", "--quiet", str(repo), str(clone)], check=True)
    config = f"bundles/{bundle}/configs/train.json"
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config]
    subprocess.run(command, cwd=clone, env={**os.environ, "PYTHONPATH": str(clone)}, check=True, timeout=900)
    assert not (clone / "models").exists(), "outputs must land in the bundle, not the cwd"
    return clone / "bundles" / bundle
