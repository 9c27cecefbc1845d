"""Helpers shared by the bundle tests: run one run id through ``ConfigWorkflow`` and read its outputs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser, ckpt_export, verify_net_in_out

from transrisk_components.bundle.workflow.entry import TransferWorkflow

#: Bundle settings small enough for tests: a tiny SegResNet, 16^3 patches, one epoch per stage, few cases.
TINY = {
    "safe#enabled": False,  # one fine-tuning run (the paper's method alone); tests/test_safe_transfer.py runs the candidates
    "network_def#init_filters": 4,
    "network_def#blocks_down": [1, 2],
    "network_def#blocks_up": [1],
    "patch_size": [16, 16, 16],
    "batch_size": 1,
    "source_epochs": 1,
    "max_epochs": 1,
    "val_interval": 1,
    "num_source": 3,
    "num_target_train": 2,
    "num_target_val": 1,
    "num_target_test": 2,
    "progress": False,
}


def run_bundle(
    configs_dir: Path,
    run_id: str,
    bundle_root: Path,
    dataset_dir: str,
    settings: Mapping[str, Any],
    configs: Sequence[str] = ("train.json",),
    **overrides: Any,
) -> TransferWorkflow:
    """Initialise and run ``run_id`` of the bundle configs ``configs`` with ``settings`` and ``overrides``, as a
    :class:`~transrisk_components.bundle.workflow.entry.TransferWorkflow` (what Python callers use).

    ``dataset_dir`` is the training data of ``train.json``; ``inference.json`` alone keeps its own default (the
    folder of the training run's ``splits.json``). A nested setting (``section#id``) whose section none of the
    configs has (``safe#enabled`` for ``inference.json`` alone) is left out; ``overrides`` are all passed.
    """
    files = [str(configs_dir / name) for name in configs]
    sections = set().union(*(json.loads(Path(f).read_text()) for f in files))
    data = {"dataset_dir": dataset_dir} if "train.json" in configs else {}
    settings = {k: v for k, v in settings.items() if "#" not in k or k.split("#")[0] in sections}
    values = {**settings, "bundle_root": str(bundle_root), **data, **overrides}
    workflow = TransferWorkflow(config_file=files, run_id=run_id, logging_file=False, **values)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return workflow


#: The ``rank_sources`` tests' settings: the tiny network and patches, 2 / 1 / 1 target training / validation / test cases.
RANK_TINY = {**{key: TINY[key] for key in ("network_def#init_filters", "network_def#blocks_down", "network_def#blocks_up",
                                           "patch_size", "num_target_train", "num_target_val", "progress")},
             "num_target_test": 1}


def rank_sources_parser(configs_dir: Path, bundle_root: Path, dataset_dir: str) -> ConfigParser:
    """``train.json`` + ``rank_sources.json`` of ``configs_dir`` with :data:`RANK_TINY`, not yet parsed."""
    parser = ConfigParser()
    parser.read_config([str(configs_dir / "train.json"), str(configs_dir / "rank_sources.json")])
    parser.update({**RANK_TINY, "bundle_root": str(bundle_root), "dataset_dir": dataset_dir})
    return parser


def validation_dice(per_case_csv: Path) -> dict[str, dict[str, float]]:
    """``{case_id: {region: dice}}`` of a validation ``metrics_per_case.csv`` (what the choice is made on)."""
    cases: dict[str, dict[str, float]] = {}
    with per_case_csv.open(newline="") as handle:
        for row in csv.DictReader(handle):
            cases.setdefault(row["case_id"], {})[row["region"]] = float(row["dice"])
    return cases


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


def run_headline_from_fresh_clone(repo: Path, tmp_path: Path, bundle: str) -> tuple[Path, str]:
    """``git clone`` ``repo`` and run ``python -m monai.bundle run training`` on the bundle as the README says.

    Returns the clone's bundle folder and the run's log (stdout and stderr); asserts that nothing was written to
    the clone's root.
    """
    clone = tmp_path / "transrisk"
    subprocess.run(["git", "clone", "--quiet", str(repo), str(clone)], check=True)
    config = f"bundles/{bundle}/configs/train.json"
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config]
    done = subprocess.run(command, cwd=clone, env={**os.environ, "PYTHONPATH": str(clone)}, timeout=900,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert done.returncode == 0, done.stdout[-5000:]
    assert not (clone / "models").exists(), "outputs must land in the bundle, not the cwd"
    return clone / "bundles" / bundle, done.stdout


def check_dead_class_report(bundle: Path, log: str) -> None:
    """The risk stage's per-class table is in ``eval/risk_stage_summary.json`` (printed for the test log), and
    every class it calls dead has its warning in the run's log."""
    summary = json.loads((bundle / "eval" / "risk_stage_summary.json").read_text())
    print("risk stage classes:", json.dumps(summary["classes"]), "dead:", summary["dead_classes"])
    assert set(summary["dead_classes"]) <= set(summary["classes"]) and "background" not in summary["dead_classes"]
    for name in summary["dead_classes"]:
        assert f"the source gives no information about class {name} " in log


def check_export_matches_eager(configs_dir: Path, trained: Path, out: Path) -> None:
    """``verify_net_in_out`` on the tiny network, then the README's ``ckpt_export`` command: plain
    ``torch.jit.load`` of the exported model gives the eager model's logits ``[1, 4, 16, 16, 16]`` to 1e-5."""
    network = {k: v for k, v in TINY.items() if k.startswith("network_def#")}
    meta = str(configs_dir / "metadata.json")
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=str(configs_dir / "train.json"), n=1, any=16,
                      **TINY, bundle_root=str(trained), dataset_dir="unused")
    ckpt_export(
        net_id="network_def",
        filepath=str(out),
        ckpt_file=str(trained / "models" / "model.pt"),
        meta_file=meta,
        config_file=str(configs_dir / "inference.json"),
        key_in_ckpt="",
        bundle_root=str(trained),
        **network,
    )
    scripted = torch.jit.load(str(out))
    parser = ConfigParser()
    parser.read_config(str(configs_dir / "inference.json"))
    parser.update(network)
    eager = parser.get_parsed_content("network_def")
    eager.load_state_dict(torch.load(trained / "models" / "model.pt", weights_only=True))
    image = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = eager.eval()(image)
        scripted_out = scripted(image)
    assert scripted_out.shape == (1, 4, 16, 16, 16)
    torch.testing.assert_close(scripted_out, expected, atol=1e-5, rtol=1e-5)


@contextmanager
def folder_locked_by_another_process(folder: Path) -> Iterator[subprocess.Popen]:
    """A live process holding ``FolderLock(folder)`` for the block (killed at its end); yields that process."""
    repo = Path(__file__).resolve().parents[1]
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from transrisk_components.utils.lock import FolderLock; "
         "FolderLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)", str(folder)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(repo)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()
