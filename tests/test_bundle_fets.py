"""The FeTS bundle's run ids end to end through ``TransferWorkflow`` (MONAI's ``ConfigWorkflow``) on a tiny phantom.

Every test writes under its own ``bundle_root`` in a temporary folder (never into the repository); the
phantom (32^3, 12 subjects) is generated once per session. The ``slow`` test runs the headline command from a
fresh clone, as a user would.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bundle_helpers import (
    TINY,
    check_export_matches_eager,
    exception_messages,
    risk_maps,
    run_bundle,
    run_ddp_training,
    check_dead_class_report,
    run_headline_from_fresh_clone,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "fets" / "configs"
TRAIN = str(CONFIGS / "train.json")


def run_workflow(run_id: str, bundle_root: Path, fets_phantom: str, configs: tuple[str, ...] = ("train.json",), **overrides):
    """Initialise and run one run id of the bundle on the phantom with the tiny settings."""
    return run_bundle(CONFIGS, run_id, bundle_root, fets_phantom, TINY, configs, **overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, fets_phantom: str) -> Path:
    """A bundle folder after ``run training`` (shared by the evaluate / inference / export tests)."""
    root = tmp_path_factory.mktemp("trained")
    run_workflow("training", root, fets_phantom)
    return root


def test_training_writes_every_stage_output(trained: Path) -> None:
    assert (trained / "models" / "source.pt").is_file()
    assert (trained / "models" / "model.pt").is_file()
    splits = json.loads((trained / "eval" / "splits.json").read_text())["splits"]
    ids = [{c["case_id"] for c in cases} for cases in splits.values()]
    assert sum(len(s) for s in ids) == len(set().union(*ids)), "splits overlap"
    assert [len(splits[k]) for k in ("source", "target_train", "target_val", "target_test")] == [3, 2, 1, 2]
    maps = risk_maps(trained)
    assert len(maps) == 2
    for case in splits["target_train"]:
        image = nib.load(case["image"][0])
        risk = nib.load(next(m for m in maps if m.name.startswith(case["case_id"])))
        assert risk.shape == image.shape
        np.testing.assert_allclose(risk.affine, image.affine, atol=1e-5)
        values = np.asarray(risk.dataobj)
        assert values.min() >= 0.0 and values.max() <= 1.0
    curve = (trained / "eval" / "learning_curves.csv").read_text().splitlines()
    assert curve[0] == "epoch,train_loss,val_dice,val_dice_ET,val_dice_TC,val_dice_WT" and len(curve) == 1 + TINY["max_epochs"]
    epoch, loss, val_dice, *per_region = map(float, curve[1].split(","))
    assert loss > 0 and 0 <= val_dice <= 1 and val_dice == pytest.approx(sum(per_region) / 3, abs=1e-5)
    assert (trained / "eval" / "learning_curves.png").stat().st_size > 1000
    events = EventAccumulator(str(trained / "runs" / "finetune"))
    events.Reload()
    assert "train_loss" in events.Tags()["scalars"], "the training loss in TensorBoard"


def test_each_stage_runs_alone_and_the_risk_cache_is_reused(tmp_path: Path, fets_phantom: str) -> None:
    run_workflow("pretrain", tmp_path, fets_phantom)
    assert (tmp_path / "models" / "source.pt").is_file()
    run_workflow("risk_map", tmp_path, fets_phantom)
    maps = risk_maps(tmp_path)
    stamps = [m.stat().st_mtime_ns for m in maps]
    run_workflow("finetune", tmp_path, fets_phantom)
    assert [m.stat().st_mtime_ns for m in risk_maps(tmp_path)] == stamps, "risk maps were recomputed"
    assert (tmp_path / "models" / "model.pt").is_file()
    run_workflow("risk_map", tmp_path, fets_phantom, **{"risk#map_normalization": "minmax"})
    assert len(risk_maps(tmp_path)) == 2 * len(maps), "a changed option must give a new cache entry"
    run_workflow("risk_map", tmp_path, fets_phantom, **{"risk#shuffle": "true"})
    shuffled = [m for m in risk_maps(tmp_path) if m.parent != maps[0].parent and m.name == maps[0].name]
    original = np.asarray(nib.load(maps[0]).dataobj)
    permuted = [np.asarray(nib.load(m).dataobj) for m in shuffled]
    assert any(np.array_equal(np.sort(p, axis=None), np.sort(original, axis=None)) and not np.array_equal(p, original)
               for p in permuted), "the random-map ablation keeps a map's values but not their places"


def test_run_equals_training_and_plain_finetuning_skips_the_risk_stage(tmp_path: Path, fets_phantom: str) -> None:
    run_workflow("run", tmp_path, fets_phantom, **{"risk#enabled": "false"})
    assert (tmp_path / "models" / "model.pt").is_file()
    assert risk_maps(tmp_path) == []


def test_no_transfer_baseline_needs_no_source_checkpoint(tmp_path: Path, fets_phantom: str) -> None:
    run_workflow("finetune", tmp_path, fets_phantom, target_init="random", **{"risk#enabled": False})
    assert (tmp_path / "models" / "model.pt").is_file()
    assert not (tmp_path / "models" / "source.pt").exists()


def test_a_finished_run_asked_for_more_epochs_resumes_from_its_checkpoint_and_says_so(
    trained: Path, tmp_path: Path, fets_phantom: str, caplog: pytest.LogCaptureFixture,
) -> None:
    shutil.copytree(trained / "models", tmp_path / "models")  # the finished 1-epoch run
    shutil.copytree(trained / "eval", tmp_path / "eval")
    shutil.copytree(trained / "outputs", tmp_path / "outputs")
    with caplog.at_level("INFO", logger="transrisk_components.bundle.workflow.pipeline"):
        run_workflow("finetune", tmp_path, fets_phantom, max_epochs=2)
    assert "resuming (a finished run of 1 epochs continues to the 2 asked)" in caplog.text
    import torch

    state = torch.load(tmp_path / "models" / "finetune_run" / "finetune_checkpoint_epoch=2.pt", weights_only=True)
    assert state["trainer"]["max_epochs"] == 2 and state["trainer"]["iteration"] == 2 * state["trainer"]["epoch_length"]
    curve = (tmp_path / "eval" / "learning_curves.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in curve] == ["epoch", "1", "2"], "the resumed run keeps epoch 1's row"


def test_different_class_counts_reinitialise_the_head(tmp_path: Path, fets_phantom: str, caplog) -> None:
    run_workflow("pretrain", tmp_path, fets_phantom)
    with caplog.at_level("INFO"):
        run_workflow("finetune", tmp_path, fets_phantom, target_task="WT", **{"risk#enabled": False})
    assert "output head re-initialised" in caplog.text


def test_a_source_checkpoint_that_does_not_fit_is_an_error(tmp_path: Path, fets_phantom: str) -> None:
    source = {"source#network_def#init_filters": 4, "source#network_def#norm": ["GROUP", {"num_groups": 4}]}
    run_workflow("pretrain", tmp_path, fets_phantom, **source)
    with pytest.raises(Exception) as error:
        run_workflow("finetune", tmp_path, fets_phantom, **source, **{"network_def#init_filters": 8, "risk#enabled": False})
    assert "source.pt does not fit the target network" in exception_messages(error.value)


def test_too_few_cases_and_missing_dataset_dir_are_errors(tmp_path: Path, fets_phantom: str) -> None:
    with pytest.raises(Exception) as error:
        run_workflow("pretrain", tmp_path, fets_phantom, num_target_train=20)
    assert "too few labelled target cases" in exception_messages(error.value)
    with pytest.raises(Exception) as error:
        run_workflow("pretrain", tmp_path, str(tmp_path / "missing"))
    assert "missing does not exist" in exception_messages(error.value)


def test_evaluate_writes_region_metrics(trained: Path, fets_phantom: str) -> None:
    run_workflow("evaluating", trained, fets_phantom, configs=("train.json", "evaluate.json"))
    with open(trained / "eval" / "metrics_per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["region"] for r in rows} == {"ET", "TC", "WT"}
    assert len({r["case_id"] for r in rows}) == 2
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    summary = json.loads((trained / "eval" / "metrics_summary.json").read_text())
    assert summary


def test_inference_writes_raw_labels_on_the_input_grid(trained: Path, fets_phantom: str, capsys: pytest.CaptureFixture) -> None:
    run_workflow("inferring", trained, fets_phantom, configs=("inference.json",))
    assert f"transrisk: 2 case(s) done; outputs in {trained / 'eval' / 'predictions'}" in capsys.readouterr().out
    splits = json.loads((trained / "eval" / "splits.json").read_text())["splits"]["target_test"]
    for case in splits:
        image = nib.load(case["image"][0])
        name = Path(case["image"][0]).name.split(".nii")[0]
        pred = nib.load(trained / "eval" / "predictions" / f"{name}_seg.nii.gz")
        assert pred.shape == image.shape
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-5)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2, 4}


def test_verify_net_in_out_and_torchscript_export(trained: Path, tmp_path: Path) -> None:
    check_export_matches_eager(CONFIGS, trained, tmp_path / "model.ts")


def test_risk_export_writes_maps_overlays_and_csv(trained: Path, fets_phantom: str) -> None:
    run_workflow("export_risk", trained, fets_phantom, configs=("train.json", "export_risk.json"))
    out = trained / "eval" / "risk_maps"
    with open(out / "risk_summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for row in rows:
        assert (out / f"{row['case_id']}_risk.nii.gz").is_file()
        assert (out / f"{row['case_id']}_risk.png").stat().st_size > 0
        assert 0.0 <= float(row["mean_risk_background"]) <= 1.0 and float(row["leep"]) <= 0.0


def test_safe_transfer_under_torchrun_with_two_gloo_processes(tmp_path: Path, fets_phantom: str) -> None:
    """``torchrun`` with ``multi_gpu_train.json``: every stage and candidate on both processes (DDP), one choice on
    validation, the report written once."""
    settings = {**TINY, "safe#enabled": True, "num_target_val": 2}
    run_ddp_training(CONFIGS, tmp_path, fets_phantom, settings, port=29517)
    assert (tmp_path / "models" / "source.pt").is_file()
    assert len(risk_maps(tmp_path)) == TINY["num_target_train"]
    report = json.loads((tmp_path / "eval" / "transfer_report.json").read_text())
    assert list(report["candidates"]) == ["risk_map", "plain", "scratch"] and report["validation_cases"] == 2
    chosen = tmp_path / "models" / "candidates" / report["chosen"] / "model.pt"
    assert (tmp_path / "models" / "model.pt").read_bytes() == chosen.read_bytes()


@pytest.mark.slow
def test_headline_command_from_a_fresh_clone(tmp_path: Path) -> None:
    bundle, log = run_headline_from_fresh_clone(REPO, tmp_path, "fets")
    check_dead_class_report(bundle, log)
    report = json.loads((bundle / "eval" / "transfer_report.json").read_text())  # safe transfer is the default
    assert set(report["candidates"]) == {"risk_map", "plain", "scratch"} and "chosen:" in log
    chosen = bundle / "models" / "candidates" / report["chosen"] / "model.pt"
    assert (bundle / "models" / "model.pt").read_bytes() == chosen.read_bytes()
    assert (bundle / "data" / "phantom" / "MICCAI_FeTS2021_TrainingData").is_dir()
