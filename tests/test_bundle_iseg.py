"""The iSeg-2019 bundle's run ids end to end through ``monai.bundle.ConfigWorkflow`` on a tiny phantom.

Every test writes under its own ``bundle_root`` in a temporary folder (never into the repository). The phantom is
the session-wide ``data_iseg_phantom`` of ``conftest.py`` (32^3 at 5 mm, subjects 1-10 labelled, 11-12 not, true
Analyze 7.5 pairs with a trailing singleton dimension). The ``slow`` test runs the headline command from a fresh
clone, as a user would.
"""

from __future__ import annotations

import csv
import json
import math
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

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "iseg" / "configs"
TRAIN = str(CONFIGS / "train.json")
ISEG_VALUES = {0, 10, 150, 250}
TISSUES = {"CSF", "GM", "WM"}



@pytest.fixture(scope="module")
def phantom(data_iseg_phantom: Path) -> str:
    return str(data_iseg_phantom)


def run_workflow(run_id: str, bundle_root: Path, phantom: str, configs: tuple[str, ...] = ("train.json",), **overrides):
    """Initialise and run one run id of the bundle on the phantom with the tiny settings."""
    return run_bundle(CONFIGS, run_id, bundle_root, phantom, TINY, configs, **overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, phantom: str) -> Path:
    """A bundle folder after ``run training`` (shared by the evaluate / inference / export tests)."""
    root = tmp_path_factory.mktemp("iseg_trained")
    run_workflow("training", root, phantom)
    return root


def _splits(root: Path) -> dict[str, list[dict]]:
    return json.loads((root / "eval" / "splits.json").read_text())["splits"]


def _assert_same_grid(written: nib.spatialimages.SpatialImage, image: nib.spatialimages.SpatialImage) -> None:
    """Same voxel grid (the input's trailing singleton dimension aside), voxel sizes and affine."""
    assert written.shape[:3] == image.shape[:3]
    assert all(s == 1 for s in written.shape[3:])
    np.testing.assert_allclose(written.header.get_zooms()[:3], image.header.get_zooms()[:3], atol=1e-5)
    np.testing.assert_allclose(written.affine, image.affine, atol=1e-5)


def _read_metrics(root: Path) -> tuple[list[dict], dict]:
    with open(root / "eval" / "metrics_per_case.csv") as f:
        rows = list(csv.DictReader(f))
    return rows, json.loads((root / "eval" / "metrics_summary.json").read_text())


def test_training_writes_every_stage_output(trained: Path) -> None:
    assert (trained / "models" / "source.pt").is_file()
    assert (trained / "models" / "model.pt").is_file()
    splits = _splits(trained)
    ids = [{c["case_id"] for c in cases} for cases in splits.values()]
    assert sum(len(s) for s in ids) == len(set().union(*ids)), "splits overlap"
    assert [len(splits[k]) for k in ("source", "target_train", "target_val", "target_test")] == [3, 2, 1, 2]
    assert not {"subject-11", "subject-12"} & set().union(*ids), "unlabelled subjects must not be used"
    assert all(c["image"][0].endswith("-T1.hdr") for c in splits["source"])
    assert all(c["image"][0].endswith("-T2.hdr") for k in ("target_train", "target_val", "target_test") for c in splits[k])
    maps = risk_maps(trained)
    assert len(maps) == 2
    for case in splits["target_train"]:
        image = nib.load(case["image"][0])
        risk = nib.load(next(m for m in maps if m.name == f"{case['case_id']}_risk.nii.gz"))
        _assert_same_grid(risk, image)
        values = np.asarray(risk.dataobj)
        assert values.min() >= 0.0 and values.max() <= 1.0
    curve = (trained / "eval" / "learning_curves.csv").read_text().splitlines()
    assert curve[0] == "epoch,train_loss,val_dice,val_dice_CSF,val_dice_GM,val_dice_WM" and len(curve) == 1 + TINY["max_epochs"]
    _, loss, val_dice, *per_region = map(float, curve[1].split(","))
    assert loss > 0 and 0 <= val_dice <= 1 and val_dice == pytest.approx(sum(per_region) / 3, abs=1e-5)


def test_each_stage_runs_alone_and_the_risk_cache_is_reused(tmp_path: Path, phantom: str) -> None:
    run_workflow("pretrain", tmp_path, phantom)
    assert (tmp_path / "models" / "source.pt").is_file()
    run_workflow("risk_map", tmp_path, phantom)
    maps = risk_maps(tmp_path)
    stamps = [m.stat().st_mtime_ns for m in maps]
    run_workflow("finetune", tmp_path, phantom)
    assert [m.stat().st_mtime_ns for m in risk_maps(tmp_path)] == stamps, "risk maps were recomputed"
    assert (tmp_path / "models" / "model.pt").is_file()
    run_workflow("risk_map", tmp_path, phantom, **{"risk#shuffle": "true"})
    shuffled = [m for m in risk_maps(tmp_path) if m.parent != maps[0].parent and m.name == maps[0].name]
    assert len(shuffled) == 1, "the random-map ablation must get its own cache entry"
    original, permuted = (np.asarray(nib.load(m).dataobj) for m in (maps[0], shuffled[0]))
    assert np.array_equal(np.sort(permuted, axis=None), np.sort(original, axis=None))
    assert not np.array_equal(permuted, original)


def test_run_equals_training_and_plain_finetuning_skips_the_risk_stage(tmp_path: Path, phantom: str) -> None:
    run_workflow("run", tmp_path, phantom, **{"risk#enabled": "false"})
    assert (tmp_path / "models" / "model.pt").is_file()
    assert risk_maps(tmp_path) == []


def test_cross_task_white_to_grey_matter(tmp_path: Path, phantom: str) -> None:
    """A WM source model transferred to GM on the same modality: LEEP needs no shared label space."""
    tasks = {"source_modality": "T2", "source_task": "WM", "target_task": "GM"}
    run_workflow("training", tmp_path, phantom, **tasks)
    cache = next((tmp_path / "outputs" / "risk_maps").glob("*/manifest.json")).parent
    manifest = json.loads((cache / "manifest.json").read_text())
    config = json.loads((cache / "risk.fingerprint.json").read_text())["config"]
    assert config["source_task"] == "WM" and config["target_task"] == "GM"
    assert np.asarray(manifest["conditional"]).shape == (2, 2)  # P(y | z): 2 target x 2 source classes
    run_workflow("evaluating", tmp_path, phantom, configs=("train.json", "evaluate.json"), **tasks)
    rows, summary = _read_metrics(tmp_path)
    assert {r["region"] for r in rows} == {"GM"} and summary["task"] == "GM"


def test_all_tissues_to_white_matter_reinitialises_the_head(tmp_path: Path, phantom: str, caplog) -> None:
    """Multiclass source (4 classes) -> binary WM target (2 classes): new head, LEEP over 2 x 4 classes."""
    run_workflow("pretrain", tmp_path, phantom)
    with caplog.at_level("INFO"):
        run_workflow("training", tmp_path, phantom, target_task="WM")
    assert "output head re-initialised" in caplog.text
    manifest = json.loads(next((tmp_path / "outputs" / "risk_maps").glob("*/manifest.json")).read_text())
    assert np.asarray(manifest["conditional"]).shape == (2, 4)


def test_unknown_modality_or_task_is_an_error(tmp_path: Path, phantom: str) -> None:
    with pytest.raises(Exception) as error:
        run_workflow("pretrain", tmp_path, phantom, target_modality="flair")
    assert "not a iseg modality" in exception_messages(error.value)
    with pytest.raises(Exception) as error:
        run_workflow("pretrain", tmp_path, phantom, target_task="WT")
    assert "WT" in exception_messages(error.value)


def test_evaluate_writes_tissue_metrics(trained: Path, phantom: str) -> None:
    run_workflow("evaluating", trained, phantom, configs=("train.json", "evaluate.json"))
    rows, summary = _read_metrics(trained)
    test_ids = {c["case_id"] for c in _splits(trained)["target_test"]}
    assert {r["case_id"] for r in rows} == test_ids
    assert len(rows) == len(test_ids) * len(TISSUES)
    assert {r["region"] for r in rows} == TISSUES
    for row in rows:
        assert 0.0 <= float(row["dice"]) <= 1.0
        for metric in ("hd95", "asd"):
            value = float(row[metric])
            assert math.isnan(value) or value >= 0.0
    assert summary["dataset"] == "iseg" and summary["n_cases"] == len(test_ids)
    assert list(summary["regions"]) == ["CSF", "GM", "WM"]
    for region in summary["regions"].values():
        assert set(region) == {"dice", "hd95", "asd"}
        assert region["dice"]["n"] == len(test_ids)


@pytest.mark.parametrize("output_format", ["nifti", "analyze"])
def test_inference_writes_iseg_labels_on_the_input_grid(trained: Path, phantom: str, output_format: str) -> None:
    out = trained / "eval" / f"predictions_{output_format}"
    run_workflow("inferring", trained, phantom, configs=("inference.json",), output_dir=str(out), output_format=output_format)
    ext = ".nii.gz" if output_format == "nifti" else ".hdr"
    cases = _splits(trained)["target_test"]
    assert len(list(out.glob(f"*{ext}"))) == len(cases)
    for case in cases:
        image = nib.load(case["image"][0])
        name = Path(case["image"][0]).name.removesuffix(".hdr")
        pred = nib.load(out / f"{name}_seg{ext}")
        if output_format == "analyze":
            assert isinstance(pred, nib.AnalyzeImage) and not isinstance(pred, nib.Nifti1Pair)
            assert b"ni1" not in (out / f"{name}_seg.hdr").read_bytes()[344:348], "a NIfTI pair, not Analyze 7.5"
            assert (out / f"{name}_seg.img").is_file()
        _assert_same_grid(pred, image)
        values = np.asarray(pred.dataobj)
        assert values.dtype == np.uint8
        assert set(np.unique(values).tolist()) <= ISEG_VALUES


def test_inference_on_a_folder_takes_only_the_matching_analyze_images(trained: Path, phantom: str, tmp_path: Path) -> None:
    folder = tmp_path / "iSeg-2019-Validation"
    folder.mkdir()
    for name in ("T1", "T2"):  # subject-11 is unlabelled, like a validation subject
        for ext in (".hdr", ".img"):
            shutil.copy(Path(phantom) / f"subject-11-{name}{ext}", folder)
    out = tmp_path / "predictions"
    run_workflow("inferring", trained, phantom, configs=("inference.json",), input=str(folder), output_dir=str(out))
    assert sorted(p.name for p in out.iterdir()) == ["subject-11-T2_seg.nii.gz"]
    pred = nib.load(out / "subject-11-T2_seg.nii.gz")
    _assert_same_grid(pred, nib.load(folder / "subject-11-T2.hdr"))
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= ISEG_VALUES


def test_verify_net_in_out_and_torchscript_export(trained: Path, tmp_path: Path) -> None:
    check_export_matches_eager(CONFIGS, trained, tmp_path / "model.ts")


def test_risk_export_writes_maps_overlays_and_csv(trained: Path, phantom: str) -> None:
    run_workflow("export_risk", trained, phantom, configs=("train.json", "export_risk.json"))
    out = trained / "eval" / "risk_maps"
    with open(out / "risk_summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["case_id"] for r in rows} == {c["case_id"] for c in _splits(trained)["target_train"]}
    for row in rows:
        assert (out / f"{row['case_id']}_risk.nii.gz").is_file()
        assert (out / f"{row['case_id']}_risk.png").stat().st_size > 0
        assert 0.0 <= float(row["mean_risk_foreground"]) <= 1.0 and float(row["leep"]) <= 0.0
        # inside the head mask the iSeg phantom labels every voxel: no background to average (nan), else a mean
        background = float(row["mean_risk_background"])
        assert math.isnan(background) or 0.0 <= background <= 1.0


def test_ddp_training_with_two_gloo_processes(tmp_path: Path, phantom: str) -> None:
    run_ddp_training(CONFIGS, tmp_path, phantom, TINY, port=29527)
    assert (tmp_path / "models" / "source.pt").is_file()
    assert (tmp_path / "models" / "model.pt").is_file()
    assert len(risk_maps(tmp_path)) == TINY["num_target_train"]


@pytest.mark.slow
def test_headline_command_from_a_fresh_clone(tmp_path: Path) -> None:
    bundle, log = run_headline_from_fresh_clone(REPO, tmp_path, "iseg")
    check_dead_class_report(bundle, log)
    chosen = json.loads((bundle / "eval" / "transfer_report.json").read_text())["chosen"]  # safe transfer is the default
    assert (bundle / "models" / "model.pt").read_bytes() == (bundle / "models" / "candidates" / chosen / "model.pt").read_bytes()
    assert (bundle / "data" / "phantom" / "iSeg-2019-Training").is_dir()
