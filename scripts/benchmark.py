"""Speed ratios and memory of transrisk's components, measured in one run.

Usage (from the repository root)::

    python scripts/benchmark.py core             # LEEP + transferability vs. a forward pass; loss step ratio
    python scripts/benchmark.py core --size 64   # smaller volume for a quick look
    python scripts/benchmark.py bundle           # risk-map overhead in the FeTS bundle, and the headline run
    python scripts/benchmark.py scale            # full-size volumes: risk stage for 2/4/8 cases, source cache
    python scripts/benchmark.py fullsize         # one full-size case through every run id, peak RSS of each

Speed ratios are medians over ``repeats`` interleaved measurements, so drifts of the machine's speed hit
both sides of a ratio alike. Memory is the peak resident set size (``ru_maxrss``) of a fresh child process
per measurement, read with ``os.wait4``. Targets are printed beside each figure; nothing is asserted.
"""

from __future__ import annotations

import json
import os
import shlex
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

from transrisk_components.bundle.caching import cached_bytes, header_voxels
from transrisk_components.data.phantom import make_fets_phantom
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


REPO = Path(__file__).resolve().parents[1]
FETS_CONFIGS = REPO / "bundles" / "fets" / "configs"

#: FeTS2022 training cases, the size the scale figures are extrapolated to.
FETS2022_CASES = 1251


def _child(args: list[str], log: Path) -> tuple[dict, float]:
    """Run ``python scripts/benchmark.py ARGS`` in a fresh process; return (its last stdout line as JSON, peak RSS GB).

    Peak RSS is the child's own ``ru_maxrss`` (kB on Linux), read with ``os.wait4``. Output goes to ``log``.
    """
    with open(log, "w") as out:
        command = [sys.executable, str(Path(__file__).resolve()), *args]
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise RuntimeError(
            f"benchmark child failed ({shlex.join(args[:2])}); its output is in {log}:\n{log.read_text()[-3000:]}"
        )
    last = [line for line in log.read_text().splitlines() if line.startswith("{")][-1]
    return json.loads(last), usage.ru_maxrss / 1e6


def _json_arg(value: str | list | dict) -> list | dict:
    """A JSON argument of a child command (``fire`` may already have parsed it)."""
    return json.loads(value) if isinstance(value, str) else value


def run_id(configs: str, run: str, overrides: str) -> None:
    """Child: initialise the bundle ``configs`` (JSON list of files) with ``overrides`` (JSON dict) and run ``run``;
    print ``{"seconds": <wall time of run()>}``."""
    workflow = _bundle_workflow(_json_arg(configs), run, **_json_arg(overrides))
    start = time.perf_counter()
    workflow.run()
    seconds = time.perf_counter() - start
    workflow.finalize()
    print(json.dumps({"seconds": seconds}))


def source_pipeline(configs: str, overrides: str) -> None:
    """Child: one epoch of the source stage's data loader (``source#dataloader``, no network); print cache
    figures as JSON."""
    workflow = _bundle_workflow(_json_arg(configs), "pretrain", **_json_arg(overrides))
    loader = workflow.parser.get_parsed_content("source#dataloader")
    start = time.perf_counter()
    for _ in loader:
        pass
    dataset = loader.dataset
    first = cached_bytes(dataset._cache[0]) if dataset.cache_num else 0
    print(json.dumps({
        "seconds": time.perf_counter() - start,
        "cases": len(dataset),
        "cache_num": dataset.cache_num,
        "cached_bytes": cached_bytes(dataset._cache),
        "bytes_per_header_voxel": first / header_voxels(dataset.data[0]),
    }))


def _phantom(phantom: str | None, subjects: int, work: Path) -> str:
    """A full-size FeTS phantom root: ``phantom`` if given (needs ``subjects`` cases), else generated in ``work``."""
    if phantom is not None:
        return str(Path(phantom).resolve())
    print(f"generating a full-size FeTS phantom with {subjects} subjects (about 15 s each) ...", flush=True)
    return str(make_fets_phantom(work, subjects=subjects, seed=0, full_size=True))


def scale(
    phantom: str | None = None,
    counts: tuple[int, ...] = (2, 4, 8),
    cache_gb: tuple[float, ...] = (0.0, 0.5, 2.0),
    network_width: int = 4,
    network_depth: int = 2,
    work_dir: str | None = None,
) -> None:
    """Issue #11 item 6: memory and time of the risk stage and the source data pipeline on full-size cases.

    Risk stage: the FeTS bundle's ``risk_map`` run id over N = ``counts`` target cases (240x240x155, FLAIR),
    each N in a fresh process, with a small SegResNet (the memory that grows with N is the per-case volumes,
    not the network's) trained for one iteration, 128^3 sliding windows. Source pipeline: one epoch of the
    source stage's loader over the remaining cases under each ``cache_gb`` budget. The last line is the peak-RSS ratio of the largest and the
    smallest N (goal <= 1.15).

    Args:
        phantom: an existing full-size FeTS phantom root with at least ``max(counts) + 4`` subjects
            (``python scripts/make_phantom.py fets --out DIR --subjects 12 --full-size``); default: generate one.
        counts: target-set sizes N.
        cache_gb: source cache budgets to measure.
        network_width: SegResNet width of the source network.
        network_depth: SegResNet levels of the source network.
        work_dir: folder for the bundle outputs and child logs (default: a temporary folder).
    """
    work = Path(work_dir or tempfile.mkdtemp(prefix="transrisk-scale-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    root = _phantom(phantom, max(counts) + 4, work)
    configs = json.dumps([str(FETS_CONFIGS / "train.json")])
    common = {"bundle_root": str(work / "bundle"), "dataset_dir": root, "progress": False, "patch_size": [128] * 3,
              "network_def#init_filters": network_width, "network_def#blocks_down": [1] + [2] * (network_depth - 1),
              "network_def#blocks_up": [1] * (network_depth - 1), "batch_size": 1,
              "num_target_val": 1, "num_target_test": 0, "seed": 0}
    source = {**common, "num_target_train": max(counts), "num_source": 1, "source_epochs": 1}
    _child(["run_id", configs, "pretrain", json.dumps(source)], work / "pretrain.log")
    risk = {}
    for n in counts:
        overrides = json.dumps({**source, "num_target_train": n})
        result, rss = _child(["run_id", configs, "risk_map", overrides], work / f"risk_{n}.log")
        risk[n] = (result["seconds"], rss)
        print(f"risk stage, N={n}: {result['seconds']:.1f} s, peak RSS {rss:.2f} GB", flush=True)
    pipeline = {}
    for budget in cache_gb:
        settings = {**common, "num_target_train": 1, "source_cache_gb": budget, "num_samples": 2}
        pipeline[budget] = _child(["source_pipeline", configs, json.dumps(settings)], work / f"source_{budget}.log")
    print(f"threads: {torch.get_num_threads()}, phantom: {root}, outputs: {work}")
    print(f"risk stage (FeTS bundle risk_map, full-size FLAIR cases, SegResNet width {network_width} / depth "
          f"{network_depth}, 128^3 windows):")
    print("| N target cases | wall time | time per case | peak RSS |")
    print("|---|---|---|---|")
    for n, (seconds, rss) in risk.items():
        print(f"| {n} | {seconds:.1f} s | {seconds / n:.1f} s | {rss:.2f} GB |")
    (n_lo, (_, rss_lo)), (n_hi, (sec_hi, rss_hi)) = min(risk.items()), max(risk.items())
    slope = (rss_hi - rss_lo) / (n_hi - n_lo)
    print(f"extrapolated to {FETS2022_CASES} cases: {sec_hi / n_hi * FETS2022_CASES / 3600:.1f} h on this machine, "
          f"peak RSS {rss_hi + slope * (FETS2022_CASES - n_hi):.2f} GB ({slope * 1000:.0f} MB per further case)")
    print("source stage data pipeline (one epoch, 2 patches of 128^3 per case, no network):")
    print("| source_cache_gb | cases cached | cache size | MB per cached case | bytes per header voxel "
          "| epoch time | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for budget, (result, rss) in pipeline.items():
        per_case = result["cached_bytes"] / max(result["cache_num"], 1) / 1e6
        print(f"| {budget:g} | {result['cache_num']} of {result['cases']} | {result['cached_bytes'] / 1e9:.2f} GB | "
              f"{per_case:.0f} | {result['bytes_per_header_voxel']:.2f} | {result['seconds']:.1f} s | {rss:.2f} GB |")
    cached = [r for r, _ in pipeline.values() if r["cache_num"]]
    if cached:
        per_case = cached[0]["cached_bytes"] / cached[0]["cache_num"]
        print(f"caching all {FETS2022_CASES} cases would take {per_case * FETS2022_CASES / 1e9:.0f} GB; "
              "source_cache_gb caps it")
    print(f"scale: risk-stage peak RSS ratio N={n_hi}/N={n_lo} = {rss_hi / rss_lo:.2f}")


def fullsize(phantom: str | None = None, profile: bool = True, work_dir: str | None = None) -> None:
    """Issue #11 "done when": one full-size case through every stage on CPU, peak RSS of each (goal <= 6 GB).

    Source training (one iteration), risk stage (source inference + LEEP + map), fine-tuning (one iteration and
    its validation pass), evaluation and inference, each a run id of the FeTS bundle in a fresh process, one
    target case per split.

    Args:
        phantom: an existing full-size FeTS phantom root with at least 4 subjects; default: generate one.
        profile: add ``configs/real_data.json`` (128^3 patches, SegResNet width 16, depth 4).
        work_dir: folder for the bundle outputs and child logs (default: a temporary folder).
    """
    work = Path(work_dir or tempfile.mkdtemp(prefix="transrisk-fullsize-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    root = _phantom(phantom, 4, work)
    train = [str(FETS_CONFIGS / "train.json")] + ([str(FETS_CONFIGS / "real_data.json")] if profile else [])
    settings = {"bundle_root": str(work / "bundle"), "dataset_dir": root, "progress": False, "num_workers": 0,
                "num_source": 1, "num_target_train": 1, "num_target_val": 1, "num_target_test": 1,
                "source_epochs": 1, "max_epochs": 1, "val_interval": 1, "num_samples": 1, "seed": 0}
    steps = [
        ("source training, 1 iteration", train, "pretrain", settings),
        ("risk stage (source inference + map)", train, "risk_map", settings),
        ("fine-tuning, 1 iteration + validation", train, "finetune", settings),
        ("evaluation (1 test case)", train + [str(FETS_CONFIGS / "evaluate.json")], "evaluating", settings),
        ("inference (1 test case)", [str(FETS_CONFIGS / "inference.json")] + train[1:], "inferring",
         {"bundle_root": str(work / "bundle"), "num_workers": 0}),
    ]
    rows = []
    for index, (name, configs, run, overrides) in enumerate(steps):
        result, rss = _child(["run_id", json.dumps(configs), run, json.dumps(overrides)], work / f"{index}_{run}.log")
        rows.append((name, run, result["seconds"], rss))
    print(f"threads: {torch.get_num_threads()}, phantom: {root} (240x240x155), profile: "
          f"{'real_data.json' if profile else 'train.json defaults'}, outputs: {work}")
    print("| step | run id | wall time | peak RSS |")
    print("|---|---|---|---|")
    for name, run, seconds, rss in rows:
        print(f"| {name} | {run} | {seconds:.0f} s | {rss:.2f} GB |")
    print(f"fullsize: peak RSS over all steps = {max(r[3] for r in rows):.2f} GB (goal <= 6 GB)")


if __name__ == "__main__":
    fire.Fire({"core": core, "bundle": bundle, "scale": scale, "fullsize": fullsize,
               "run_id": run_id, "source_pipeline": source_pipeline})
