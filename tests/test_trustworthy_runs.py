"""No stage output is reused across a changed setting, resumes keep the best model, failures say what to do.

Runs the FeTS bundle's run ids on a tiny phantom (see ``TINY`` in ``bundle_helpers.py``), each test under its
own ``bundle_root``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from bundle_helpers import TINY, exception_messages, folder_locked_by_another_process, risk_maps, run_bundle
from test_bundle_fets import CONFIGS

from transrisk_components.bundle.workflow.errors import real_cause
from transrisk_components.data.registry import get_dataset
from transrisk_components.utils.distributed import shutdown_process_group
from transrisk_components.utils.io import atomic_write_text, remove_partial_writes
from transrisk_components.utils.lock import FolderBusyError, FolderLock

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 32^3 FeTS phantom with 12 subjects (this module's own: some tests modify its files)."""
    root = get_dataset("fets").make_phantom(tmp_path_factory.mktemp("fets"), subjects=12, seed=0, shape=(32, 32, 32))
    return str(root)


def run(run_id: str, bundle_root: Path, dataset_dir: str, configs: tuple[str, ...] = ("train.json",), **overrides):
    return run_bundle(CONFIGS, run_id, bundle_root, dataset_dir, TINY, configs, **overrides)


def stale_message(run_id: str, bundle_root: Path, dataset_dir: str, **overrides) -> str:
    """The error message of a run that must refuse stale outputs."""
    with pytest.raises(Exception) as error:
        run(run_id, bundle_root, dataset_dir, **overrides)
    cause = real_cause(error.value)
    assert type(cause).__name__ == "StaleOutputError", exception_messages(error.value)
    return str(cause)


def test_baseline_after_a_default_run_stops_then_trains_its_own_model(tmp_path: Path, phantom: str) -> None:
    run("training", tmp_path, phantom)
    models = tmp_path / "models"
    risk_weighted = (models / "model.pt").read_bytes()
    source_stamp = (models / "source.pt").stat().st_mtime_ns
    message = stale_message("training", tmp_path, phantom, **{"risk#enabled": "false"})
    assert "fine-tuning stage" in message and "config.risk#enabled: true -> false" in message
    assert "--overwrite true" in message and "--bundle_root" in message
    assert (models / "model.pt").read_bytes() == risk_weighted, "a refused run must leave the outputs alone"

    run("training", tmp_path, phantom, overwrite="true", **{"risk#enabled": "false"})
    assert (models / "model.pt").read_bytes() != risk_weighted, "the baseline trains anew"
    assert (models / "source.pt").stat().st_mtime_ns == source_stamp, "the matching source stage is reused"
    record = json.loads((models / "finetune.fingerprint.json").read_text())
    assert record["config"]["risk#enabled"] is False and "risk" not in record["upstream"]
    stamp = (models / "model.pt").stat().st_mtime_ns
    run("training", tmp_path, phantom, **{"risk#enabled": False})  # same settings, other spelling: reused
    assert (models / "model.pt").stat().st_mtime_ns == stamp


def test_a_changed_seed_does_not_reuse_the_source_model(tmp_path: Path, phantom: str) -> None:
    run("pretrain", tmp_path, phantom)
    message = stale_message("pretrain", tmp_path, phantom, seed=1)
    assert "source stage" in message and "config.seed: 0 -> 1" in message and "inputs." in message


def test_a_modified_input_file_is_not_reused(tmp_path: Path, phantom: str) -> None:
    data = tmp_path / "data"
    shutil.copytree(phantom, data)
    root = tmp_path / "bundle"
    run("pretrain", root, str(data))
    run("risk_map", root, str(data))
    splits = json.loads((root / "eval" / "splits.json").read_text())["splits"]
    maps = risk_maps(root)

    target_image = Path(splits["target_train"][0]["image"][0])
    os.utime(target_image, ns=(target_image.stat().st_atime_ns, target_image.stat().st_mtime_ns + 10**9))
    run("risk_map", root, str(data))
    assert len(risk_maps(root)) == 2 * len(maps), "a regenerated input file must give new risk maps"

    source_label = Path(splits["source"][0]["label"])
    source_label.write_bytes(source_label.read_bytes())  # regenerated: same bytes, new mtime
    os.utime(source_label, ns=(source_label.stat().st_atime_ns, source_label.stat().st_mtime_ns + 10**9))
    message = stale_message("pretrain", root, str(data))
    assert f"inputs.{source_label.relative_to(data)}" in message.replace(os.sep, "/") or source_label.name in message


def test_a_resumed_run_keeps_the_better_model(tmp_path: Path, phantom: str) -> None:
    run("training", tmp_path, phantom)
    periodic = tmp_path / "models" / "finetune_run" / "finetune_checkpoint_epoch=1.pt"
    state = torch.load(periodic, map_location="cpu", weights_only=True)
    (score, name), = state["best"]["saved"]
    assert state["best"]["best_metric_epoch"] == 1 and score == pytest.approx(state["best"]["best_metric"], abs=1e-4)
    # pretend epoch 1 scored a perfect Dice: no later epoch can beat it, so model.pt must stay epoch 1's
    state["best"] = {"best_metric": 1.0, "best_metric_epoch": 1, "saved": [(1.0, name)]}
    torch.save(state, periodic)
    best = (tmp_path / "models" / "model.pt").read_bytes()
    run("finetune", tmp_path, phantom, max_epochs=3)
    assert (tmp_path / "models" / "model.pt").read_bytes() == best, "a worse epoch replaced the best model"
    resumed = torch.load(tmp_path / "models" / "finetune_run" / "finetune_checkpoint_epoch=3.pt", weights_only=True)
    assert resumed["best"]["best_metric"] == 1.0 and resumed["best"]["best_metric_epoch"] == 1
    assert resumed["trainer"]["max_epochs"] == 3
    assert sorted(p.name for p in (tmp_path / "models" / "finetune_run").iterdir()) == ["finetune_checkpoint_epoch=3.pt"], (
        "the checkpoints of the epochs before are pruned")


@pytest.mark.parametrize("damage", ["random", "truncated"])
def test_a_corrupt_checkpoint_is_named_with_its_remedy(tmp_path: Path, phantom: str, damage: str) -> None:
    run("training", tmp_path, phantom)
    source = tmp_path / "models" / "source.pt"
    periodic = tmp_path / "models" / "finetune_run" / "finetune_checkpoint_epoch=1.pt"
    model = tmp_path / "models" / "model.pt"
    runs = {periodic: ("finetune", ("train.json",)), model: ("evaluating", ("train.json", "evaluate.json")),
            source: ("pretrain", ("train.json",))}
    for path, (run_id, configs) in runs.items():
        good = path.read_bytes()
        path.write_bytes(os.urandom(len(good)) if damage == "random" else good[: len(good) // 2])
        with pytest.raises(Exception) as error:
            run(run_id, tmp_path, phantom, configs, max_epochs=2)
        message = str(real_cause(error.value))
        assert f"checkpoint {path} cannot be read" in message and "delete it" in message
        path.unlink()  # the remedy the message names
    run("pretrain", tmp_path, phantom)
    assert torch.load(source, weights_only=True), "the source model is rebuilt from its finished run"


def test_a_second_run_on_a_busy_folder_names_the_holder(tmp_path: Path, phantom: str) -> None:
    with folder_locked_by_another_process(tmp_path) as holder:
        with pytest.raises(Exception) as error:
            run("pretrain", tmp_path, phantom)
        cause = real_cause(error.value)
        assert isinstance(cause, FolderBusyError)
        assert f'"pid": {holder.pid}' in str(cause) and '"host"' in str(cause) and '"started"' in str(cause)
    FolderLock(tmp_path).acquire()  # the killed holder's lock is stale: taken without any cleanup
    FolderLock(tmp_path).release()


def test_partial_files_of_a_killed_run_are_removed_and_outputs_are_readable_by_others(tmp_path: Path, phantom: str) -> None:
    orphan = tmp_path / "outputs" / "risk_maps" / "0123456789abcdef" / ".X_risk.nii.gz.partial-1a2b3c4d.nii.gz"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"half")
    old = os.umask(0o022)
    try:
        run("pretrain", tmp_path, phantom)
        written = atomic_write_text(tmp_path / "text.txt", "x")
    finally:
        os.umask(old)
    assert not orphan.exists()
    assert (tmp_path / "models" / "source.pt").stat().st_mode & 0o777 == 0o644
    assert written.stat().st_mode & 0o777 == 0o644
    assert remove_partial_writes(tmp_path) == []


def test_a_moved_risk_cache_is_reused(tmp_path: Path, phantom: str) -> None:
    run("pretrain", tmp_path, phantom)
    run("risk_map", tmp_path, phantom)
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "outputs" / "risk_maps", moved)
    stamps = {p.name: p.stat().st_mtime_ns for p in moved.glob("*/*_risk.nii.gz")}
    run("risk_map", tmp_path, phantom, risk_dir=str(moved))
    assert {p.name: p.stat().st_mtime_ns for p in moved.glob("*/*_risk.nii.gz")} == stamps


def test_the_real_cause_is_the_last_thing_a_user_sees(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "monai.bundle", "run", "pretrain", "--config_file", str(CONFIGS / "train.json"),
        "--bundle_root", str(tmp_path), "--dataset_dir", str(tmp_path / "missing"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-2].startswith("transrisk: the run stopped:") and "missing does not exist" in lines[-2], result.stderr[-2000:]
    log = tmp_path / "runs" / "last_error.log"
    assert lines[-1] == f"(full traceback: {log}; --debug true prints it here)"
    assert "Traceback" in log.read_text() and "Traceback" not in result.stderr, "one paragraph, the traceback in the file"


def test_evaluating_a_model_of_another_network_stops_in_one_paragraph_naming_the_remedy(tmp_path: Path, phantom: str) -> None:
    run("finetune", tmp_path, phantom)
    settings = {**TINY, "network_def#init_filters": 8}  # the model was trained with 4
    command = [sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file",
               json.dumps([str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")]),
               "--bundle_root", str(tmp_path), "--dataset_dir", phantom]
    for key, value in settings.items():
        command += [f"--{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 1, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-2].startswith("transrisk: the run stopped: ValueError:") and "another architecture" in lines[-2]
    assert "--network_def#init_filters 4" in lines[-2], "the override the model was trained with"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def test_foreign_source_weights_are_used_only_when_declared(tmp_path: Path, phantom: str) -> None:
    run("pretrain", tmp_path / "first", phantom)
    external = tmp_path / "other_bundle_model.pt"
    shutil.copy(tmp_path / "first" / "models" / "source.pt", external)
    with pytest.raises(Exception) as error:
        run("pretrain", tmp_path / "second", phantom, source_ckpt=str(external))
    cause = real_cause(error.value)
    assert type(cause).__name__ == "ForeignOutputError", exception_messages(error.value)
    assert "was not made by this bundle" in str(cause) and "--train_source false" in str(cause)
    run("pretrain", tmp_path / "second", phantom, source_ckpt=str(external), train_source=False)
    assert not (tmp_path / "second" / "models" / "source_run").exists(), "nothing may be trained"
    assert external.read_bytes() == (tmp_path / "first" / "models" / "source.pt").read_bytes()


def test_shutdown_process_group_waits_for_every_rank_and_ends_the_group(tmp_path: Path) -> None:
    """One gloo process, without DDP: a DDP module freed in this process after the group is destroyed joins gloo's
    threads while holding the GIL that one of them may be waiting for (a hang). The bundle DDP tests run the
    function on two processes with DDP; ``scripts/ddp_exit_check.py`` counts exit aborts."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        shutdown_process_group()
        assert not dist.is_initialized()
        shutdown_process_group()  # without a group: nothing to do
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_handlers_log_one_line_not_a_traceback_while_the_run_stops(tmp_path: Path) -> None:
    """MONAI's ``StatsHandler`` logs every exception with its traceback on its way out; from the command line the
    traceback goes to the log file alone."""
    import io
    import logging

    from transrisk_components.bundle.workflow.errors import command_line_errors

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger().addHandler(handler)
    try:
        with pytest.raises(SystemExit), command_line_errors(tmp_path / "last_error.log", False, ["monai.bundle", "run"]):
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as interrupt:
                logging.getLogger("StatsHandler").exception(f"Exception: {interrupt!r}")
                raise
        try:
            raise ValueError("after the run")
        except ValueError:
            logging.getLogger("after").exception("outside the run, a traceback is kept")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = stream.getvalue()
    assert "Exception: KeyboardInterrupt()" in lines
    assert lines.count("Traceback") == 1 and lines.index("Traceback") > lines.index("outside the run")
