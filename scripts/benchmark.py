"""Speed ratios of transrisk's components, measured side by side in one run.

Usage (from the repository root)::

    python scripts/benchmark.py core             # LEEP + transferability vs. a forward pass; loss step ratio
    python scripts/benchmark.py core --size 64   # smaller volume for a quick look
    python scripts/benchmark.py bundle           # risk-map overhead in the FeTS bundle, and the headline run

Each figure is the median over ``repeats`` interleaved measurements, so drifts of the machine's speed hit
both sides of a ratio alike. Targets are printed beside each ratio; nothing is asserted.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import fire
import torch
from monai.bundle import ConfigWorkflow
from monai.losses import DiceCELoss
from monai.networks.nets import SegResNet
from monai.utils import set_determinism

from transrisk_components.method.losses import RiskWeightedLoss
from transrisk_components.method.transferability import LEEPStatistics, pixel_transferability


def _seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of one call of ``fn`` (synchronising CUDA around it)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Run each function once as warm-up, then ``repeats`` rounds in turn; return the median seconds of each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_seconds(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}


def core(size: int = 128, classes: int = 4, repeats: int = 5, seed: int = 0) -> None:
    """Issue #2 targets on a ``size``^3 volume with ``classes`` source and target classes.

    (a) LEEP ``update`` + ``pixel_transferability`` / one SegResNet(init_filters=16) forward pass (target <= 0.10);
    (b) one fine-tuning step with ``RiskWeightedLoss`` / the same step with MONAI ``DiceCELoss`` (target <= 1.03).
    """
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network = SegResNet(spatial_dims=3, in_channels=1, out_channels=classes, init_filters=16).to(device)
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-4)
    image = torch.randn(1, 1, size, size, size, device=device)
    labels = torch.randint(0, classes, (1, 1, size, size, size), device=device)
    risk = torch.rand(1, 1, size, size, size, device=device)
    source_probs = torch.softmax(torch.randn(1, classes, size, size, size, device=device), dim=1)
    weighted_loss, plain_loss = RiskWeightedLoss(), DiceCELoss(to_onehot_y=True, softmax=True)

    def forward_pass() -> None:
        with torch.no_grad():
            network(image)

    def leep_and_transferability() -> None:
        stats = LEEPStatistics(classes, classes)
        stats.update(source_probs, labels)
        pixel_transferability(source_probs, labels, stats.conditional())

    def step(use_risk: bool) -> None:
        optimizer.zero_grad(set_to_none=True)
        logits = network(image)
        loss = weighted_loss(logits, labels, risk) if use_risk else plain_loss(logits, labels)
        loss.backward()
        optimizer.step()

    medians = _interleaved_medians(
        {
            "forward": forward_pass,
            "leep": leep_and_transferability,
            "step_weighted": lambda: step(True),
            "step_plain": lambda: step(False),
        },
        repeats,
        device,
    )
    leep_ratio = medians["leep"] / medians["forward"]
    step_ratio = medians["step_weighted"] / medians["step_plain"]
    print(f"device: {device}, threads: {torch.get_num_threads()}, volume: {size}^3, classes: {classes}, repeats: {repeats}")
    print(f"SegResNet(init_filters=16) forward:        {medians['forward']:.3f} s")
    print(f"LEEP update + pixel_transferability:       {medians['leep']:.3f} s")
    print(f"(a) LEEP+T / forward                       {leep_ratio:.3f}   (target <= 0.10)")
    print(f"step with RiskWeightedLoss:                {medians['step_weighted']:.3f} s")
    print(f"step with DiceCELoss:                      {medians['step_plain']:.3f} s")
    print(f"(b) weighted step / DiceCE step            {step_ratio:.3f}   (target <= 1.03)")


def _bundle_workflow(config_file: str, run_id: str, **overrides: object) -> ConfigWorkflow:
    """An initialised ``ConfigWorkflow`` of the bundle config."""
    workflow = ConfigWorkflow(config_file=config_file, run_id=run_id, logging_file=False, workflow_type=None, **overrides)
    workflow.initialize()
    return workflow


def bundle(
    config_file: str = "bundles/fets/configs/train.json", repeats: int = 5, headline: bool = True, seed: int = 0
) -> None:
    """Issue #4 item 6 (bundle performance), in one run, in a temporary bundle folder.

    (a) one fine-tuning iteration with the risk map / the same iteration without it (target <= 1.03);
    (b) the risk stage over the target training cases / one source inference pass over them (target <= 2.0);
    (c) with ``headline``: the headline command's wall time (target <= 600 s on 2 CPU cores) and the target
        Dice it reached (evaluate.json on the target test cases).
    """
    root = Path(tempfile.mkdtemp(prefix="transrisk-bench-"))
    configs = Path(config_file).resolve().parent
    common = {"bundle_root": str(root), "progress": False, "source_epochs": 2, "seed": seed}
    _bundle_workflow(config_file, "pretrain", **common).run()
    with_risk = _bundle_workflow(config_file, "finetune", **common)
    without = _bundle_workflow(config_file, "finetune", **common, **{"risk#enabled": False})
    trainers = {name: wf.parser.get_parsed_content("train#trainer") for name, wf in (("risk", with_risk), ("plain", without))}
    batches = {name: next(iter(trainer.data_loader)) for name, trainer in trainers.items()}
    set_determinism(seed)
    device = trainers["risk"].state.device if hasattr(trainers["risk"].state, "device") else torch.device("cpu")
    step = _interleaved_medians(
        {name: (lambda t=trainer, b=batches[name]: t._iteration(t, b)) for name, trainer in trainers.items()},
        repeats,
        device,
    )
    stage = with_risk.parser.get_parsed_content("risk_stage")
    inferer = with_risk.parser.get_parsed_content("validate#inferer")
    load = with_risk.parser.get_parsed_content("validate#preprocessing")
    network = stage._load_network()

    def inference_pass() -> None:
        with torch.no_grad():
            for case in stage.cases:
                inferer(load(case)["image"].as_tensor().unsqueeze(0), network)

    def risk_stage() -> None:
        stage._compute(Path(tempfile.mkdtemp(dir=root)))

    risk = _interleaved_medians({"inference": inference_pass, "risk": risk_stage}, max(1, repeats // 2), device)
    print(f"device: {device}, threads: {torch.get_num_threads()}, bundle config: {config_file}")
    print(f"fine-tuning iteration with risk map:       {step['risk']:.3f} s")
    print(f"fine-tuning iteration without:             {step['plain']:.3f} s")
    print(f"(a) with / without                         {step['risk'] / step['plain']:.3f}   (target <= 1.03)")
    print(f"source inference pass over {len(stage.cases)} target cases: {risk['inference']:.3f} s")
    print(f"risk stage (LEEP pass + maps written):     {risk['risk']:.3f} s")
    print(f"(b) risk stage / inference pass            {risk['risk'] / risk['inference']:.3f}   (target <= 2.0)")
    if not headline:
        return
    fresh = Path(tempfile.mkdtemp(prefix="transrisk-headline-"))
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config_file,
               "--bundle_root", str(fresh), "--progress", "False"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ})
    seconds = time.perf_counter() - start
    evaluate = [config_file, str(configs / "evaluate.json")]
    subprocess.run([sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file", json.dumps(evaluate),
                    "--bundle_root", str(fresh)], check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((fresh / "eval" / "metrics_summary.json").read_text())
    print(f"(c) headline command (phantom + source + risk + fine-tuning): {seconds:.0f} s   (target <= 600 s)")
    print(f"    target test Dice: {json.dumps(summary)}")


if __name__ == "__main__":
    fire.Fire({"core": core, "bundle": bundle})
