"""Speed ratios, stage times and memory of transrisk's components, measured in one run.

Usage (from the repository root)::

    python scripts/benchmark.py core             # LEEP + transferability vs. a forward pass; loss step ratio
    python scripts/benchmark.py core --size 64   # smaller volume for a quick look
    python scripts/benchmark.py bundle           # the FeTS bundle's ratios: weighted / plain step, risk stage /
                                                 # inference pass, safe workflow / one fine-tuning run
    python scripts/benchmark.py headline         # the headline command, stage by stage
    python scripts/benchmark.py scale            # full-size volumes: risk stage for 2/4/8 cases, source cache
    python scripts/benchmark.py fullsize         # one full-size case through every run id, peak RSS of each
    python scripts/benchmark.py gpu              # on a GPU: full-size fine-tuning throughput against plain MONAI
                                                 # SegResNet + DiceCE, the risk stage's time per case, peak memory

Speed ratios are medians over ``repeats`` interleaved measurements, the order reversed every other round, so
drifts of the machine's speed and going first or second hit both sides of a ratio alike. Memory is the peak
resident set size (``ru_maxrss``) of a fresh child process per measurement, read with ``os.wait4``. Targets are
printed beside each figure; nothing is asserted. Each subcommand's last line sums it up (``core: ...``,
``bundle: ...``, ``headline: ...``, ``scale: ...``, ``fullsize: ...``, ``gpu: ...``).
"""

from __future__ import annotations

import functools
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fire
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.engines import SupervisedTrainer
from monai.losses import DiceCELoss
from monai.networks.nets import SegResNet
from monai.utils import set_determinism

from transrisk_components.bundle.engine.caching import cached_bytes, header_voxels
from transrisk_components.bundle.workflow.entry import TransferWorkflow
from transrisk_components.bundle.workflow.pipeline import TransferPipeline
from transrisk_components.bundle.workflow.request import BundleRequest
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


def _interleaved_times(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Run each function once as warm-up, then ``repeats`` rounds in turn, the order reversed every other round (so
    that going first or second weighs on every function alike); return each one's seconds per round."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_index in range(repeats):
        order = list(fns.items()) if round_index % 2 == 0 else list(reversed(fns.items()))
        for name, fn in order:
            times[name].append(_seconds(fn, device))
    return times


def _interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """The median seconds of each function over :func:`_interleaved_times`' rounds."""
    return {name: statistics.median(values) for name, values in _interleaved_times(fns, repeats, device).items()}


def _ratio_of_medians_ci(numerator: list[float], denominator: list[float], resamples: int = 2000,
                         level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of ``median(numerator) / median(denominator)``, resampling the rounds (paired: a
    round's two times stay together, so a slow round slows both sides); ``(nan, nan)`` for fewer than 2 rounds."""
    rounds = len(numerator)
    if rounds < 2:
        return math.nan, math.nan
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randint(rounds, (resamples, rounds), generator=generator).tolist()
    ratios = sorted(statistics.median(numerator[i] for i in pick) / statistics.median(denominator[i] for i in pick)
                    for pick in indices)
    tail = (1.0 - level) / 2.0
    return ratios[int(tail * (resamples - 1))], ratios[int((1.0 - tail) * (resamples - 1))]


def _json_arg(value: str | list | dict) -> list | dict:
    """A JSON argument of a command (``fire`` may already have parsed it)."""
    return json.loads(value) if isinstance(value, str) else value


def _config_files(config_file: str | list[str]) -> list[str]:
    """``config_file`` as a list of absolute paths: one path, or a JSON list of paths (as ``monai.bundle`` takes)."""
    files = _json_arg(config_file) if isinstance(config_file, str) and config_file.lstrip().startswith("[") else config_file
    return [str(Path(f).resolve()) for f in ([files] if isinstance(files, str) else files)]


def core(size: int = 128, classes: int = 4, repeats: int = 9, seed: int = 0) -> None:
    """Issue #2 targets on a ``size``^3 volume with ``classes`` source and target classes.

    (a) LEEP ``update`` + ``pixel_transferability`` / one SegResNet(init_filters=16) forward pass (target <= 0.10);
    (b) one fine-tuning step with ``RiskWeightedLoss`` (the bundles' default: foreground-normalised, the whole
    volume being the case) / the same step with MONAI ``DiceCELoss`` (target <= 1.03).
    """
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network = SegResNet(spatial_dims=3, in_channels=1, out_channels=classes, init_filters=16).to(device)
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-4)
    image = torch.randn(1, 1, size, size, size, device=device)
    labels = torch.randint(0, classes, (1, 1, size, size, size), device=device)
    foreground = (labels > 0).flatten(1).sum(dim=1)  # [B] whole-case foreground voxel count
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
        loss = weighted_loss(logits, labels, risk, foreground) if use_risk else plain_loss(logits, labels)
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
    print(f"core: LEEP+T/forward = {leep_ratio:.3f}, weighted/DiceCE step = {step_ratio:.3f}")


def _bundle_workflow(config_file: str | list[str], run_id: str, **overrides: object) -> ConfigWorkflow:
    """An initialised workflow of the bundle config (its run ids that run stages build them from its files and
    overrides)."""
    workflow = TransferWorkflow(config_file=config_file, run_id=run_id, logging_file=False, **overrides)
    workflow.initialize()
    return workflow


def _stage_workflows(files: list[str], **overrides: object) -> tuple[ConfigWorkflow, ConfigWorkflow | None]:
    """The initialised workflows of the fine-tuning stage and of the risk stage it reads (``None`` without the map),
    as ``finetune`` would run them, after the source model and the maps were made (``risk_map``)."""
    _bundle_workflow(files, "risk_map", **overrides).run()
    plan = TransferPipeline(BundleRequest.create(files, overrides), "finetune").plan(check_outputs=False)
    candidate = plan.candidates[0]
    workflows = [candidate.finetune.config.workflow(),
                 plan.risks[candidate.risk_key].config.workflow() if candidate.risk_key else None]
    for workflow in workflows:
        if workflow is not None:
            workflow.initialize()
    return workflows[0], workflows[1]


def _forever(loader: Any) -> Iterator[Any]:
    """The batches of ``loader``, epoch after epoch."""
    while True:
        yield from loader


def _bundle_command(config_files: list[str], run_id: str, settings: dict[str, Any]) -> list[str]:
    """``python -m monai.bundle run RUN_ID --config_file ... --key value ...`` (lists as JSON)."""
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", json.dumps(config_files)]
    for key, value in settings.items():
        command += [f"--{key}", json.dumps(value) if isinstance(value, (list, dict)) else str(value)]
    return command


def bundle(
    config_file: str | list[str] = "bundles/fets/configs/train.json",
    repeats: int = 9,
    steps: int = 4,
    run_epochs: int = 2,
    overrides: str | dict = "{}",
    seed: int = 0,
) -> None:
    """The bundle's three speed ratios, in one run, in a temporary bundle folder (the phantom, source trained for
    2 epochs).

    (a) one fine-tuning step with the risk map / the same step without it (``risk#enabled false``), each step a
        batch from the trainer's data loader (random crops of image, label and map) and one iteration on it,
        ``steps`` steps per round (target <= 1.01), with a 95% bootstrap CI over the rounds;
    (b) the risk stage over the target training cases (source pass, LEEP, kept probabilities, maps written) / one
        source inference pass over them (target <= 1.2);
    (c) ``python -m monai.bundle run safe_training`` / ``... run finetune`` with the same settings (``run_epochs``
        epochs, validation every epoch), each in a fresh copy of the prepared bundle folder: what the safe-transfer
        workflow's candidates cost against one fine-tuning run; ``n/a`` when the config has no ``safe_training``.

    Args:
        config_file: the bundle's ``train.json``, or a JSON list of config files.
        repeats: rounds of each interleaved measurement (medians are reported).
        steps: fine-tuning steps per round in (a).
        run_epochs: ``max_epochs`` of the runs of (c).
        overrides: JSON dict of further config overrides for every measurement (e.g. a smaller network).
        seed: the bundle's ``seed``.
    """
    files = _config_files(config_file)
    root = Path(tempfile.mkdtemp(prefix="transrisk-bench-"))
    prepared = root / "bundle"
    common = {"progress": False, "source_epochs": 2, "seed": seed, **_json_arg(overrides), "bundle_root": str(prepared)}
    with_risk, risk_workflow = _stage_workflows(files, **common)
    without, _ = _stage_workflows(files, **common, **{"risk#enabled": False})
    trainers = {name: wf.parser.get_parsed_content("train#trainer") for name, wf in (("risk", with_risk), ("plain", without))}
    batches = {name: _forever(trainer.data_loader) for name, trainer in trainers.items()}
    set_determinism(seed)
    device = torch.device(with_risk.parser.get_parsed_content("device"))

    def train_steps(name: str) -> None:
        trainer = trainers[name]
        for _ in range(steps):
            trainer._iteration(trainer, next(batches[name]))

    step_times = _interleaved_times({name: functools.partial(train_steps, name) for name in trainers}, repeats, device)
    step = {name: statistics.median(values) for name, values in step_times.items()}
    step_low, step_high = _ratio_of_medians_ci(step_times["risk"], step_times["plain"])
    stage = risk_workflow.parser.get_parsed_content("risk_stage")
    inferer = with_risk.parser.get_parsed_content("validate#inferer")
    load = with_risk.parser.get_parsed_content("validate#preprocessing")
    network = stage._load_network()

    def inference_pass() -> None:
        with torch.no_grad():
            for case in stage.cases:
                inferer(load(case)["image"].as_tensor().unsqueeze(0).to(device), network)

    def risk_stage() -> None:
        stage._compute(Path(tempfile.mkdtemp(dir=root)))

    risk = _interleaved_medians({"inference": inference_pass, "risk": risk_stage}, repeats, device)
    step_ratio, risk_ratio = step["risk"] / step["plain"], risk["risk"] / risk["inference"]
    print(f"device: {device}, threads: {torch.get_num_threads()}, bundle config: {' + '.join(files)}, repeats: {repeats}")
    print(f"fine-tuning step with risk map (batch + iteration): {step['risk'] / steps:.3f} s")
    print(f"fine-tuning step without:                           {step['plain'] / steps:.3f} s")
    print(f"(a) weighted / plain step                  {step_ratio:.3f}   (target <= 1.01)   95% CI over the {repeats} "
          f"rounds: {step_low:.3f} to {step_high:.3f}")
    print(f"source inference pass over {len(stage.cases)} target cases: {risk['inference']:.3f} s")
    print(f"risk stage (source pass, LEEP, maps):      {risk['risk']:.3f} s")
    print(f"(b) risk stage / inference pass            {risk_ratio:.3f}   (target <= 1.2)")
    safe = _safe_over_one_run(files, with_risk, common, repeats, run_epochs, root / "runs")
    print(f"bundle: weighted/plain step = {step_ratio:.3f}, risk stage/inference pass = {risk_ratio:.3f}, "
          f"safe/one run = {safe}")


def _safe_over_one_run(
    files: list[str], prepared: ConfigWorkflow, common: dict, repeats: int, run_epochs: int, runs: Path
) -> str:
    """(c) of :func:`bundle`: the median wall time of ``run safe_training`` over that of ``run finetune``, as text
    (``"n/a (no safe_training run id)"`` when the config has none).

    Each run gets a fresh copy of the ``prepared`` bundle folder (source model and risk maps made; the phantom
    stays where it is, named by ``dataset_dir``), so no run reuses another's fine-tuning outputs.
    """
    parser = ConfigParser()
    parser.read_config(files)
    if parser.get("safe_training") is None:
        print("(c) safe workflow / one fine-tuning run    n/a: the config has no 'safe_training' run id")
        return "n/a (no safe_training run id)"
    folder = Path(common["bundle_root"])
    phantom = Path(prepared.parser.get_parsed_content("phantom_dir")).resolve()
    settings = {**common, "dataset_dir": prepared.parser.get_parsed_content("dataset_dir"),
                "max_epochs": run_epochs, "val_interval": 1}
    runs.mkdir(parents=True, exist_ok=True)

    def skipped(parent: str, names: list[str]) -> list[str]:
        return [n for n in names if n == ".bundle.lock" or Path(parent, n).resolve() == phantom]

    def timed_run(run_id: str, index: int) -> float:
        fresh = runs / f"{run_id}_{index}"
        shutil.copytree(folder, fresh, ignore=skipped)
        command = _bundle_command(files, run_id, {**settings, "bundle_root": str(fresh)})
        log = runs / f"{run_id}_{index}.log"
        with open(log, "w") as out:
            start = time.perf_counter()
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=fresh)
            seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{shlex.join(command)} failed; its output is in {log}:\n{log.read_text()[-3000:]}")
        return seconds

    times: dict[str, list[float]] = {"safe_training": [], "finetune": []}
    for index in range(repeats):
        for run_id, seconds in times.items():
            seconds.append(timed_run(run_id, index))
    safe, one = (statistics.median(times[r]) for r in ("safe_training", "finetune"))
    print(f"run finetune ({run_epochs} epochs, start-up included): {one:.1f} s")
    print(f"run safe_training (same settings):        {safe:.1f} s")
    print(f"(c) safe workflow / one fine-tuning run    {safe / one:.2f}   (what the candidates cost; no fixed target)")
    return f"{safe / one:.3f}"


class StageTimer:
    """Exclusive wall time per stage: each moment is charged to the innermost stage running then.

    :meth:`wrap` replaces a method or function by one that enters its stage around the call; :meth:`restore` puts
    the originals back. Time outside every stage is not charged.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[str] = []
        self._since = time.perf_counter()
        self._originals: list[tuple[Any, str, Any]] = []

    def enter(self, stage: str) -> None:
        """Start charging time to ``stage`` (until the matching :meth:`exit`)."""
        now = time.perf_counter()
        if self._stack:
            self.seconds[self._stack[-1]] += now - self._since
        self._stack.append(stage)
        self._since = now

    def exit(self) -> None:
        """Leave the innermost stage; time goes back to the one around it."""
        now = time.perf_counter()
        self.seconds[self._stack.pop()] += now - self._since
        self._since = now

    @property
    def current(self) -> str | None:
        """The innermost stage running now, or ``None``."""
        return self._stack[-1] if self._stack else None

    def wrap(self, owner: Any, name: str, stage: str | Callable[[StageTimer, Any], str]) -> None:
        """Time ``owner.name`` as ``stage`` (or as ``stage(timer, first argument)``, e.g. by the engine it runs)."""
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.enter(stage if isinstance(stage, str) else stage(self, args[0] if args else None))
            try:
                return original(*args, **kwargs)
            finally:
                self.exit()

        self._originals.append((owner, name, original))
        setattr(owner, name, timed)

    def restore(self) -> None:
        """Put back every method and function :meth:`wrap` replaced."""
        for owner, name, original in reversed(self._originals):
            setattr(owner, name, original)
        self._originals.clear()


#: The headline's stages in the order they run, as :func:`headline` prints them.
HEADLINE_STAGES = (
    "imports and interpreter start-up",
    "phantom generation",
    "input checks",
    "planning (settings, fingerprints)",
    "source training: data loading",
    "source training: iterations",
    "risk stage",
    "fine-tuning: data loading",
    "fine-tuning: iterations",
    "validation",
    "checkpoints",
    "TensorBoard",
    "figures",
    "other (config parsing, building objects, logging)",
)


@contextmanager
def _headline_timers(timer: StageTimer) -> Iterator[None]:
    """Wrap what the headline run spends its time in (see :data:`HEADLINE_STAGES`)."""
    from ignite.engine import Events
    from ignite.handlers import Checkpoint
    from monai.engines import SupervisedEvaluator, SupervisedTrainer
    from monai.handlers import TensorBoardStatsHandler

    import transrisk_components.bundle.workflow.pipeline as pipeline
    import transrisk_components.data.scenario as scenario
    from transrisk_components.bundle.handlers.curves import LearningCurveWriter
    from transrisk_components.bundle.stages.risk import RiskStage
    from transrisk_components.bundle.stages.source import SourceStage

    def trainer_stage(timer: StageTimer, trainer: Any) -> str:
        part = "source training" if timer.current == "source training: iterations" else "fine-tuning"
        trainer.add_event_handler(Events.GET_BATCH_STARTED, lambda _: timer.enter(f"{part}: data loading"))
        trainer.add_event_handler(Events.GET_BATCH_COMPLETED, lambda _: timer.exit())
        return f"{part}: iterations"

    timer.wrap(scenario, "resolve_dataset_dir", "phantom generation")
    timer.wrap(scenario, "check_cases", "input checks")
    timer.wrap(pipeline.TransferPipeline, "plan", "planning (settings, fingerprints)")
    timer.wrap(SourceStage, "run", "source training: iterations")
    timer.wrap(RiskStage, "run", "risk stage")
    timer.wrap(SupervisedTrainer, "run", trainer_stage)
    timer.wrap(SupervisedEvaluator, "run", "validation")
    timer.wrap(Checkpoint, "__call__", "checkpoints")
    timer.wrap(TensorBoardStatsHandler, "iteration_completed", "TensorBoard")
    timer.wrap(TensorBoardStatsHandler, "epoch_completed", "TensorBoard")
    timer.wrap(LearningCurveWriter, "_draw", "figures")
    try:
        yield
    finally:
        timer.restore()


def headline_stages(configs: str, overrides: str) -> None:
    """Child of :func:`headline`: ``training`` -- what ``python -m monai.bundle run training`` runs -- on the bundle
    ``configs`` (JSON list) with ``overrides`` (JSON dict), its stages timed; prints ``{"main_seconds", "stages":
    {stage: seconds}}`` (stages as in :data:`HEADLINE_STAGES`)."""
    start = time.perf_counter()
    timer = StageTimer()
    with _headline_timers(timer):
        timer.enter("other (config parsing, building objects, logging)")
        workflow = TransferWorkflow(config_file=_json_arg(configs), run_id="training", **_json_arg(overrides))
        workflow.initialize()
        workflow.run()
        workflow.finalize()
        timer.exit()
    if timer.current is not None:
        raise RuntimeError(f"stage timer left inside {timer.current!r}: a timed stage was entered and never left")
    print(json.dumps({"main_seconds": time.perf_counter() - start, "stages": timer.seconds}))


def headline(
    config_file: str | list[str] = "bundles/fets/configs/train.json", overrides: str | dict = "{}",
    work_dir: str | None = None,
) -> None:
    """The headline command (``python -m monai.bundle run training --config_file bundles/fets/configs/train.json``:
    phantom, source, risk maps, the safe-transfer candidates' fine-tuning, validation, choice) in a fresh bundle
    folder, stage by stage, in one child process; then the same with ``--safe#enabled false`` (the paper's method,
    one fine-tuning run) in another fresh folder, for the ratio of the two.

    Each stage's time is exclusive (a validation inside fine-tuning counts as validation only); "imports and
    interpreter start-up" is the child's wall time before the run starts. The last line is the safe headline's total
    (target <= 300 s on 2 CPU cores) and its ratio to the one-run headline (target <= 1.5).

    Args:
        config_file: the bundle's ``train.json``, or a JSON list of config files.
        overrides: JSON dict of config overrides (none: the headline itself).
        work_dir: folder for the bundle outputs and the children's logs (default: a temporary folder).
    """
    work = Path(work_dir or tempfile.mkdtemp(prefix="transrisk-headline-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    files = _config_files(config_file)
    totals, tables = {}, {}
    for name, more in (("safe", {}), ("one run", {"safe#enabled": False})):
        folder = "bundle" if name == "safe" else "bundle_one_run"
        settings = {**_json_arg(overrides), **more, "bundle_root": str(work / folder)}
        log = work / f"headline_{folder}.log"
        start = time.perf_counter()
        result, rss = _child(["headline_stages", json.dumps(files), json.dumps(settings)], log)
        totals[name] = time.perf_counter() - start
        tables[name] = ({"imports and interpreter start-up": totals[name] - result["main_seconds"], **result["stages"]},
                        rss, log, settings)
    stages, rss, log, settings = tables["safe"]
    total = totals["safe"]
    print(f"threads: {torch.get_num_threads()}, bundle config: {' + '.join(files)}, overrides: {json.dumps(settings)}")
    print(f"log: {log}, peak RSS {rss:.2f} GB")
    print("| stage | wall time | share |")
    print("|---|---|---|")
    for name in HEADLINE_STAGES:
        print(f"| {name} | {stages.get(name, 0.0):.2f} s | {100 * stages.get(name, 0.0) / total:.0f}% |")
    print(f"| total | {total:.2f} s | 100% |")
    one = totals["one run"]
    print(f"one-run headline (--safe#enabled false): {one:.2f} s, its fine-tuning iterations "
          f"{tables['one run'][0].get('fine-tuning: iterations', 0.0):.2f} s (log: {tables['one run'][2]})")
    print(f"headline: total = {total:.1f} s (target <= 300 s on 2 CPU cores), safe/one run = {total / one:.2f} "
          "(target <= 1.5)")


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
    plan = TransferPipeline(BundleRequest.create(_json_arg(configs), _json_arg(overrides)), "pretrain").plan(check_outputs=False)
    workflow = plan.source.config.workflow()
    workflow.initialize()
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
    patch: int = 128,
    work_dir: str | None = None,
) -> None:
    """Memory and time of the risk stage and the source data pipeline on full-size cases.

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
        patch: edge of the training patches and sliding windows.
        work_dir: folder for the bundle outputs and child logs (default: a temporary folder).
    """
    work = Path(work_dir or tempfile.mkdtemp(prefix="transrisk-scale-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    root = _phantom(phantom, max(counts) + 4, work)
    configs = json.dumps([str(FETS_CONFIGS / "train.json")])
    common = {"bundle_root": str(work / "bundle"), "dataset_dir": root, "progress": False, "patch_size": [patch] * 3,
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
          f"{network_depth}, {patch}^3 windows):")
    print("| N target cases | wall time | time per case | peak RSS |")
    print("|---|---|---|---|")
    for n, (seconds, rss) in risk.items():
        print(f"| {n} | {seconds:.1f} s | {seconds / n:.1f} s | {rss:.2f} GB |")
    (n_lo, (_, rss_lo)), (n_hi, (sec_hi, rss_hi)) = min(risk.items()), max(risk.items())
    slope = (rss_hi - rss_lo) / (n_hi - n_lo)
    print(f"extrapolated to {FETS2022_CASES} cases: {sec_hi / n_hi * FETS2022_CASES / 3600:.1f} h on this machine, "
          f"peak RSS {rss_hi + slope * (FETS2022_CASES - n_hi):.2f} GB ({slope * 1000:.0f} MB per further case)")
    print(f"source stage data pipeline (one epoch, 2 patches of {patch}^3 per case, no network):")
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
    """One full-size case through every stage on CPU, peak RSS of each (goal <= 6 GB).

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


def gpu(
    phantom: str | None = None,
    cases: int = 4,
    repeats: int = 9,
    steps: int = 4,
    run_epochs: int = 2,
    overrides: str | dict = "{}",
    work_dir: str | None = None,
) -> None:
    """Full-size figures for a GPU (runs on the CPU too, slowly): the FeTS bundle with ``real_data.json``.

    (a) fine-tuning throughput, ``steps`` training steps per round (a batch from the bundle's loader and one
        iteration), of the bundle with the risk map and without it, each against **plain MONAI**: the same network,
        data loader and optimiser in a ``SupervisedTrainer`` with MONAI's default ``prepare_batch`` and
        ``DiceCELoss`` (goal: >= 0.95 of its throughput) -- at the profile's ``num_workers`` (what users run; the
        headline figure) and at 0 (the loader in the training process);
    (b) the risk stage over ``cases`` full-size target cases: wall time per case and the peak GPU memory
        (``torch.cuda.max_memory_allocated``) of the stage and of one candidate's training steps;
    (c) the safe workflow's wall time (``run safe_training``, its candidates side by side as ``safe#workers auto``
        places them) over one fine-tuning run's (``run finetune``), ``run_epochs`` epochs each, fresh copies of the
        prepared bundle folder (goal <= 1.3).

    Args:
        phantom: a full-size FeTS phantom root with at least ``cases + 2`` subjects; default: generate one.
        cases: target training cases (risk stage and fine-tuning loader).
        repeats: interleaved rounds of (a); medians are reported.
        steps: training steps per round.
        run_epochs: ``max_epochs`` of the runs of (c).
        overrides: JSON dict of further overrides (after ``real_data.json``), e.g. a smaller patch for a test.
        work_dir: folder for the phantom and bundle outputs (default: a temporary folder).

    Last line: ``gpu: throughput with map/plain MONAI = <a> (>= 0.95), safe/one run wall = <b> (<= 1.3), peak GPU
    memory = <m> GB`` (``a`` at the profile's ``num_workers``).
    """
    work = Path(work_dir or tempfile.mkdtemp(prefix="transrisk-gpu-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    files = [str(FETS_CONFIGS / "train.json"), str(FETS_CONFIGS / "real_data.json")]
    extra = dict(_json_arg(overrides))
    profile_workers = int(extra.pop("num_workers", json.loads((FETS_CONFIGS / "real_data.json").read_text())["num_workers"]))
    common = {"bundle_root": str(work / "bundle"), "dataset_dir": _phantom(phantom, cases + 2, work), "progress": False,
              "num_target_train": cases, "num_target_val": 1, "num_target_test": 0, "num_source": 1,
              "source_epochs": 1, "seed": 0, "num_workers": profile_workers, **extra}
    _bundle_workflow(files, "pretrain", **common).run()
    request = BundleRequest.create(files, common)
    risk_stage = next(iter(TransferPipeline(request, "risk_map").plan(check_outputs=False).risks.values()))
    risk_workflow = risk_stage.config.workflow()
    risk_workflow.initialize()
    device = torch.device(risk_workflow.parser.get_parsed_content("device"))
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    risk_workflow.parser.get_parsed_content("risk_stage").run()
    risk_seconds = time.perf_counter() - start
    risk_memory = torch.cuda.max_memory_allocated(device) / 1e9 if cuda else float("nan")
    name = torch.cuda.get_device_name(device) if cuda else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}, bundle config: {' + '.join(files)}, {cases} full-size cases, repeats: {repeats}", flush=True)
    ratios: dict[int, tuple[float, float]] = {}
    train_memory = float("nan")
    for loader_workers in dict.fromkeys((profile_workers, 0)):
        loader = {"train#dataloader#num_workers": loader_workers,  # the fine-tuning loader alone: the source is made
                  "train#dataset#runtime_cache": "processes" if loader_workers > 0 else True}  # as train.json derives it
        step, memory = _throughput(files, {**common, **loader}, device, repeats, steps)
        train_memory = memory if math.isnan(train_memory) else max(train_memory, memory)
        ratios[loader_workers] = (step["monai"] / step["risk"], step["monai"] / step["plain"])
        print(f"num_workers {loader_workers}:")
        for label, key in (("with the risk map", "risk"), ("without (plain fine-tuning)", "plain"), ("plain MONAI", "monai")):
            print(f"  fine-tuning step {label + ':':<30} {step[key] / steps:.3f} s ({steps / step[key]:.2f} steps/s)")
        print(f"  (a) throughput with map / plain MONAI      {ratios[loader_workers][0]:.3f}   (goal >= 0.95)")
        print(f"      throughput without map / plain MONAI   {ratios[loader_workers][1]:.3f}   (goal >= 0.95)", flush=True)
    print(f"(b) risk stage: {risk_seconds / cases:.1f} s per case, peak GPU memory {risk_memory:.2f} GB; "
          f"one candidate's training steps: peak GPU memory {train_memory:.2f} GB", flush=True)
    prepared, _ = _stage_workflows(files, **common)
    safe = _safe_over_one_run(files, prepared, common, 1, run_epochs, work / "runs")
    print(f"gpu: throughput with map/plain MONAI = {ratios[profile_workers][0]:.3f} (>= 0.95), safe/one run wall = "
          f"{float(safe):.2f} (<= 1.3), peak GPU memory = {max(risk_memory, train_memory):.2f} GB")


def _throughput(files: list[str], settings: dict[str, Any], device: torch.device, repeats: int,
                steps: int) -> tuple[dict[str, float], float]:
    """(a) of :func:`gpu` at one loader setting: the median seconds of ``steps`` training steps of the bundle with
    the map (``risk``), without (``plain``) and of plain MONAI (``monai``), and the peak GPU memory (GB; NaN on CPU)."""
    with_risk, _ = _stage_workflows(files, **settings)
    without, _ = _stage_workflows(files, **settings, **{"risk#enabled": False})
    trainers = {name: wf.parser.get_parsed_content("train#trainer") for name, wf in (("risk", with_risk), ("plain", without))}
    trainers["monai"] = SupervisedTrainer(
        device=device, max_epochs=1, train_data_loader=trainers["plain"].data_loader,
        network=without.parser.get_parsed_content("network"), optimizer=without.parser.get_parsed_content("optimizer"),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True), amp=bool(without.parser.get_parsed_content("amp")),
    )
    batches = {name: _forever(trainer.data_loader) for name, trainer in trainers.items()}

    def train_steps(name: str) -> None:
        trainer = trainers[name]
        for _ in range(steps):
            trainer._iteration(trainer, next(batches[name]))

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    step = _interleaved_medians({name: functools.partial(train_steps, name) for name in trainers}, repeats, device)
    return step, torch.cuda.max_memory_allocated(device) / 1e9 if cuda else float("nan")


if __name__ == "__main__":
    fire.Fire({"core": core, "bundle": bundle, "headline": headline, "scale": scale, "fullsize": fullsize, "gpu": gpu,
               "run_id": run_id, "source_pipeline": source_pipeline, "headline_stages": headline_stages})
