"""Speed ratios of transrisk's components, measured side by side in one run.

Usage (from the repository root)::

    python scripts/benchmark.py core             # LEEP + transferability vs. a forward pass; loss step ratio
    python scripts/benchmark.py core --size 64   # smaller volume for a quick look

Each figure is the median over ``repeats`` interleaved measurements, so drifts of the machine's speed hit
both sides of a ratio alike. Targets are printed beside each ratio; nothing is asserted.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import fire
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import SegResNet

from transrisk_components.losses import RiskWeightedLoss
from transrisk_components.transferability import LEEPStatistics, pixel_transferability


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


if __name__ == "__main__":
    fire.Fire({"core": core})
