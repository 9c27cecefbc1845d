"""Files the bundle did not make are never deleted or changed, and a downloaded model coexists with the user's runs.

An output is the bundle's own only when a fingerprint record of ours names it (``workflow.plan.decide``);
a checkpoint the user brought (``--source_ckpt`` elsewhere) and a Model Zoo download's ``models/model.pt`` are not,
whatever ``--overwrite`` says. Beside such a ``models/model.pt`` the bundle trains into ``models/trained/``, and
evaluation and inference use the downloaded model until the bundle trained its own. The bundle runs use the FeTS
bundle on a tiny phantom (``TINY`` in ``bundle_helpers.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bundle_helpers import TINY, run_bundle
from monai.bundle import ConfigParser
from test_bundle_fets import CONFIGS

from transrisk_components.bundle.io.records import ForeignOutputError, StaleOutputError, named_by_a_record
from transrisk_components.bundle.workflow.entry import TransferWorkflow
from transrisk_components.bundle.workflow.errors import real_cause
from transrisk_components.bundle.workflow.plan import StagePlan, decide
from transrisk_components.bundle.workflow.stage import StageConfig
from transrisk_components.utils.io import file_sha256

REPO = Path(__file__).resolve().parents[1]


def run(run_id: str, bundle_root: Path, dataset_dir: str, configs: tuple[str, ...] = ("train.json",), **overrides):
    return run_bundle(CONFIGS, run_id, bundle_root, dataset_dir, TINY, configs, **overrides)


def refusal(run_id: str, bundle_root: Path, dataset_dir: str, **overrides) -> BaseException:
    """The real cause of a run that must stop (its folder lock released, so that another process can run there)."""
    values = {**TINY, "bundle_root": str(bundle_root), "dataset_dir": dataset_dir, **overrides}
    workflow = TransferWorkflow(config_file=str(CONFIGS / "train.json"), run_id=run_id, logging_file=False, **values)
    workflow.initialize()
    try:
        with pytest.raises(Exception) as error:
            workflow.run()
    finally:
        workflow.finalize()
    return real_cause(error.value)


def random_weights(config_id: str, path: Path) -> Path:
    """A ``state_dict`` of the tiny bundle's ``config_id`` network with random weights, as the Zoo's CI fakes them."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({k: v for k, v in TINY.items() if k.startswith("network_def#")} | {"bundle_root": str(path.parent)})
    torch.manual_seed(7)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(parser.get_parsed_content(config_id).state_dict(), path)
    return path


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


# --- the rule itself, on files -------------------------------------------------------------------------------


def _stage(folder: Path, outputs: list[Path], seed: int = 0) -> StagePlan:
    """A fine-tuning stage whose fingerprint is ``{"seed": seed}``, writing ``outputs``."""
    fingerprint = {"stage": "finetune", "version": "test", "config": {"seed": seed}, "resolved": {}, "inputs": {}, "upstream": {}}
    return StagePlan(StageConfig("finetune", ()), fingerprint, folder / "finetune.fingerprint.json", tuple(outputs),
                     tuple(outputs[:1]), None, 1)


def test_a_record_names_its_outputs_and_nothing_beside_them(tmp_path: Path) -> None:
    own, beside = tmp_path / "model.pt", tmp_path / "user_model.pt"
    run_dir = tmp_path / "finetune_run"
    stage = decide(_stage(tmp_path, [own, run_dir]), overwrite=False, upstream_reused=True)
    assert stage.decision == "run"
    stage.start()
    record = json.loads((tmp_path / "finetune.fingerprint.json").read_text())
    assert record["outputs"] == ["finetune_run", "model.pt"], "outputs are named relative to the record's folder"
    assert named_by_a_record(own) and named_by_a_record(run_dir)
    assert not named_by_a_record(beside) and not named_by_a_record(tmp_path / "elsewhere" / "model.pt")
    # the outputs list is where, not what: the same settings still match
    torch.save({"weights": torch.zeros(1)}, own)
    assert decide(_stage(tmp_path, [own, run_dir]), overwrite=False, upstream_reused=True).decision == "resume"
    stage.finish()
    assert decide(_stage(tmp_path, [own, run_dir]), overwrite=False, upstream_reused=True).decision == "reuse"
    assert decide(_stage(tmp_path, [own, run_dir]), overwrite=True, upstream_reused=False).decision == "redo", (
        "a stage built on one that runs again is not reused")


def test_a_record_from_before_0_5_names_everything_in_its_folder(tmp_path: Path) -> None:
    legacy = {"stage": "finetune", "version": "0.4.2", "settings": {}, "upstream": {}, "inputs": {}}
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "finetune.fingerprint.json").write_text(json.dumps(legacy))
    assert named_by_a_record(tmp_path / "models" / "model.pt")
    assert not named_by_a_record(tmp_path / "model.pt")


@pytest.mark.parametrize("overwrite", [False, True])
def test_overwrite_never_deletes_a_foreign_output(tmp_path: Path, overwrite: bool) -> None:
    shipped = tmp_path / "model.pt"
    shipped.write_bytes(b"downloaded weights")
    before = snapshot(shipped)
    with pytest.raises(ForeignOutputError, match="never deleted or changed, whatever --overwrite says") as error:
        decide(_stage(tmp_path, [shipped]), overwrite=overwrite, upstream_reused=True)
    assert str(shipped) in str(error.value)
    assert snapshot(shipped) == before and not (tmp_path / "finetune.fingerprint.json").exists()


def test_overwrite_never_deletes_what_the_stage_builds_on(tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    _stage(tmp_path, [model]).start()
    model.write_bytes(b"our fine-tuned model, now the source of the next run")
    before = snapshot(model)
    with pytest.raises(ValueError, match="builds on .*model.pt, which is also one of its outputs"):
        decide(_stage(tmp_path, [model], seed=1), overwrite=True, upstream_reused=True, builds_on=[model])
    assert snapshot(model) == before


def test_overwrite_still_deletes_the_bundle_s_own_outputs_and_names_what_changed(tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    _stage(tmp_path, [model]).start()
    model.write_bytes(b"ours")
    with pytest.raises(StaleOutputError, match=r"config\.seed: 0 -> 1") as error:
        decide(_stage(tmp_path, [model], seed=1), overwrite=False, upstream_reused=True)
    assert "--overwrite true" in str(error.value) and model.is_file()
    again = decide(_stage(tmp_path, [model], seed=1), overwrite=True, upstream_reused=True)
    assert again.decision == "redo"
    again.start()
    assert not model.exists()
    assert json.loads((tmp_path / "finetune.fingerprint.json").read_text())["config"] == {"seed": 1}


# --- a new user's run: their own source checkpoint -- ----------------------------------------------------------


def test_overwrite_never_deletes_a_foreign_source_checkpoint(tmp_path: Path, fets_phantom: str) -> None:
    """``--source_ckpt`` outside the bundle root with ``--overwrite true``: the run stops and names the remedy, the
    user's file stays byte-identical; the remedy, typed on the command line, fine-tunes from it untouched."""
    user_model = random_weights("source#network_def", tmp_path / "elsewhere" / "user_model.pt")
    before = snapshot(user_model)
    bundle = tmp_path / "bundle"
    cause = refusal("training", bundle, fets_phantom, source_ckpt=str(user_model), overwrite="true")
    assert isinstance(cause, ForeignOutputError), repr(cause)
    assert f"source checkpoint {user_model} was not made by this bundle" in str(cause)
    assert "--train_source false" in str(cause)
    assert snapshot(user_model) == before, "the user's checkpoint must not be deleted or changed"

    command = [
        sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.json"),
        "--bundle_root", str(bundle), "--dataset_dir", fets_phantom, "--source_ckpt", str(user_model),
        "--train_source", "false", "--overwrite", "true",
    ]
    for key, value in TINY.items():
        command += [f"--{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    done = subprocess.run(command, cwd=bundle.parent, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert snapshot(user_model) == before
    assert not list((bundle / "models").glob("source_run/*.pt")), "a declared source is used as it is, never trained"
    record = json.loads((bundle / "models" / "finetune.fingerprint.json").read_text())
    assert record["upstream"]["source"] == f"sha256={file_sha256(user_model)}"
    assert (bundle / "models" / "model.pt").is_file()


# --- a Model Zoo download: models/model.pt that the bundle did not make ------------------------------------------


def test_a_downloaded_model_survives_training_with_overwrite_and_is_used_until_the_bundle_trains(tmp_path: Path, fets_phantom: str) -> None:
    shipped = random_weights("network_def", tmp_path / "models" / "model.pt")
    before = snapshot(shipped)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"bundle_root": str(tmp_path)})
    assert parser.get_parsed_content("model_file") == str(shipped), "inference uses the downloaded model at first"

    run("training", tmp_path, fets_phantom, overwrite="true")
    trained = tmp_path / "models" / "trained"
    assert snapshot(shipped) == before, "training must not delete or change the downloaded model"
    assert (trained / "model.pt").is_file() and (trained / "source.pt").is_file()
    assert json.loads((trained / "finetune.fingerprint.json").read_text())["outputs"] == ["finetune_run", "model.pt"]
    assert not (tmp_path / "models" / "finetune_run").exists() and not (tmp_path / "models" / "source.pt").exists()

    run("evaluating", tmp_path, fets_phantom, ("train.json", "evaluate.json"))
    summary = json.loads((tmp_path / "eval" / "metrics_summary.json").read_text())
    assert summary["model"] == {"file": str((trained / "model.pt").resolve()), "sha256": file_sha256(trained / "model.pt")}
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"bundle_root": str(tmp_path)})
    assert parser.get_parsed_content("model_file") == str(trained / "model.pt"), "then the bundle's own model"

    # the bundle's own outputs in models/trained are still redone in place, and the download still survives
    own = (trained / "model.pt").read_bytes()
    run("training", tmp_path, fets_phantom, overwrite="true", **{"risk#enabled": "false"})
    assert (trained / "model.pt").read_bytes() != own
    assert snapshot(shipped) == before


def test_the_downloaded_model_serves_as_a_foreign_source_model(tmp_path: Path, fets_phantom: str) -> None:
    shipped = random_weights("network_def", tmp_path / "models" / "model.pt")
    before = snapshot(shipped)
    run("training", tmp_path, fets_phantom, source_ckpt=str(shipped), overwrite="true", train_source=False)
    trained = tmp_path / "models" / "trained"
    assert not (trained / "source_run").exists() and not (trained / "source.pt").exists(), "the source is not trained"
    assert snapshot(shipped) == before
    record = json.loads((trained / "finetune.fingerprint.json").read_text())
    assert record["upstream"]["source"] == f"sha256={file_sha256(shipped)}"
    assert (trained / "model.pt").is_file()
