"""A source model the bundle did not train, through the FeTS bundle (issue #22, item 5), at tiny size.

The Zoo brats model is faked as the Model Zoo's CI fakes it: the ``network_def`` of ``brats_mri_segmentation``'s
``configs/inference.json`` (SegResNet 1-2-2-4 / 1-1-1, 16 filters, 4 channels T1ce, T1, T2, FLAIR in, 3 sigmoid
regions TC, WT, ET out) with random weights saved as ``models/model.pt`` (a ``state_dict``), in a folder of its own
outside the bundle. The phantom is 32^3 with 12 subjects; the bundle settings are ``TINY`` (``bundle_helpers.py``).
"""

from __future__ import annotations

import json
import shutil
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest
import torch
from bundle_helpers import TINY, risk_maps, run_bundle
from monai.bundle import ConfigParser
from monai.networks.nets import SegResNet
from test_bundle_fets import CONFIGS
from test_foreign_files import refusal

from transrisk_components.utils.io import file_sha256

REPO = Path(__file__).resolve().parents[1]
#: The Zoo brats network as ``network_def`` of the target network too (its weights carry over).
ZOO_TARGET = {"network_def#init_filters": 16, "network_def#blocks_down": [1, 2, 2, 4], "network_def#blocks_up": [1, 1, 1]}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Model Zoo ``brats_mri_segmentation`` folder: ``configs/inference.json#network_def``, random ``models/model.pt``."""
    root = tmp_path_factory.mktemp("brats_mri_segmentation")
    network_def = {"_target_": "SegResNet", "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "init_filters": 16,
                   "in_channels": 4, "out_channels": 3, "dropout_prob": 0.2}
    (root / "configs").mkdir()
    (root / "configs" / "inference.json").write_text(json.dumps({"network_def": network_def}, indent=4))
    (root / "models").mkdir()
    torch.manual_seed(22)
    parser = ConfigParser({"network_def": network_def})
    torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")
    return root


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def cli(run_id: str, configs: list[str], bundle: Path, settings: dict) -> str:
    """``python -m monai.bundle run <run_id>`` as a user types it; the log (asserts success)."""
    files = configs[0] if len(configs) == 1 else json.dumps(configs)
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", files]
    for key, value in settings.items():
        command += [f"--{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    done = subprocess.run(command, cwd=bundle.parent, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _parser(**overrides: object) -> ConfigParser:
    """The FeTS bundle's fine-tuning and risk configs with ``overrides``."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "risk.json")])
    parser.update(overrides)
    return parser


def test_foreign_source_defaults_read_one_channel_and_feed_the_source_the_cases_own_images(tmp_path: Path, fets_phantom: str) -> None:
    parser = _parser(**TINY, bundle_root=str(tmp_path), dataset_dir=fets_phantom)
    assert parser.get_parsed_content("network_def#in_channels") == 1
    assert parser.get_parsed_content("source#network_def#in_channels") == 1
    assert parser.get_parsed_content("risk_stage#source_datalist") is None


def test_foreign_source_zoo_brats_model_end_to_end_through_the_bundle_cli(tmp_path: Path, fets_phantom: str, zoo: Path) -> None:
    """The README's worked example: the Zoo brats model (4 channels, 3 sigmoid regions) as the source of a FLAIR-only,
    4-class FeTS target: risk maps over its 2^3 region states, fine-tuning from its weights (input layer 4 -> 1,
    head 3 -> 4), evaluation, inference; the Zoo's files are only read."""
    ckpt = zoo / "models" / "model.pt"
    before = snapshot(ckpt)
    bundle = tmp_path / "bundle"
    settings = {
        **TINY, **ZOO_TARGET, "bundle_root": str(bundle), "dataset_dir": fets_phantom,
        "source_ckpt": str(ckpt), "train_source": "false",
        "source#network_def": f"%{zoo}/configs/inference.json::network_def",
        "num_source_classes": 3, "source_output": "sigmoid", "source_modality": "all", "target_modality": "flair",
        "overwrite": "true",
    }
    log = cli("training", [str(CONFIGS / "train.json")], bundle, settings)
    assert "source model: given (train_source false), only read" in log
    assert "input layer convInit.conv.weight adapted" in log and "output head re-initialised" in log
    cache = next((bundle / "outputs" / "risk_maps").glob("*/manifest.json")).parent
    manifest = json.loads((cache / "manifest.json").read_text())
    assert len(manifest["conditional"]) == 4 and len(manifest["conditional"][0]) == 8, "P(y | z): 4 classes x 2^3 states"
    assert len(risk_maps(bundle)) == TINY["num_target_train"]
    fingerprint = json.loads((cache / "risk.fingerprint.json").read_text())
    assert fingerprint["config"]["source_output"] == "sigmoid"
    assert any(name.endswith("_t1ce.nii.gz") for name in fingerprint["inputs"]), "the source's inputs are inputs"
    assert fingerprint["upstream"]["source"] == f"sha256={file_sha256(ckpt)}"
    model = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert model["convInit.conv.weight"].shape == (16, 1, 3, 3, 3) and model["conv_final.2.conv.weight"].shape[0] == 4

    evaluation = {**TINY, **ZOO_TARGET, "bundle_root": str(bundle), "dataset_dir": fets_phantom}  # the README's command
    cli("evaluating", [str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")], bundle, evaluation)
    summary = json.loads((bundle / "eval" / "metrics_summary.json").read_text())
    assert summary["model"]["sha256"] == file_sha256(bundle / "models" / "model.pt")
    inference = {**ZOO_TARGET, "bundle_root": str(bundle), "patch_size": TINY["patch_size"]}
    cli("inferring", [str(CONFIGS / "inference.json")], bundle, inference)
    assert len(list((bundle / "eval" / "predictions").glob("*_seg.nii.gz"))) == TINY["num_target_test"]
    assert snapshot(ckpt) == before, "the Zoo's checkpoint is never changed"


def test_foreign_source_one_to_four_channels(tmp_path: Path, fets_phantom: str, caplog) -> None:
    """A T1 source trained here, fine-tuned on all four modalities: the source reads the target cases' T1, the
    target's first layer gets four channels by the documented rule."""
    with caplog.at_level("INFO"):
        run_bundle(CONFIGS, "training", tmp_path, fets_phantom, TINY, target_modality="all")
    assert "source reads ['t1'], target ['t1ce', 't1', 't2', 'flair']: input layer convInit.conv.weight adapted" in caplog.text
    source = torch.load(tmp_path / "models" / "source.pt", weights_only=True)
    assert source["convInit.conv.weight"].shape[1] == 1
    assert torch.load(tmp_path / "models" / "model.pt", weights_only=True)["convInit.conv.weight"].shape[1] == 4
    source_cases = _parser(**TINY, bundle_root=str(tmp_path), dataset_dir=fets_phantom, target_modality="all").get_parsed_content(
        "risk_stage#source_datalist")
    assert all(len(c["image"]) == 1 and c["image"][0].endswith("_t1.nii.gz") for c in source_cases)
    splits = json.loads((tmp_path / "eval" / "splits.json").read_text())
    assert splits["modality"] == {"source": "t1", "target": "all"}
    assert all(len(c["image"]) == 4 for c in splits["splits"]["target_train"])
    # the 4-channel model predicts with inferring: the target-test split, then a folder of case sub-folders
    inference = {"patch_size": TINY["patch_size"], **{k: v for k, v in TINY.items() if k.startswith("network_def#")}}
    run_bundle(CONFIGS, "inferring", tmp_path, "", inference, ("inference.json",), target_modality="all")
    predictions = sorted((tmp_path / "eval" / "predictions").glob("*_seg.nii.gz"))
    assert len(predictions) == TINY["num_target_test"]
    subject = Path(splits["splits"]["target_test"][0]["image"][0]).parent
    cases = tmp_path / "cases"
    shutil.copytree(subject, cases / subject.name)
    out = tmp_path / "folder_predictions"
    run_bundle(CONFIGS, "inferring", tmp_path, "", inference, ("inference.json",), target_modality="all",
               input=str(cases), output_dir=str(out))
    [written] = list(out.glob("*_seg.nii.gz"))
    assert nib.load(written).shape == nib.load(subject / f"{subject.name}_flair.nii.gz").shape


def test_foreign_source_torchscript_file(tmp_path: Path, fets_phantom: str, caplog) -> None:
    """A TorchScript source (its network and weights in one file) with 4 softmax classes on T1."""
    network = SegResNet(spatial_dims=3, in_channels=1, out_channels=4, init_filters=4, blocks_down=(1, 2), blocks_up=(1,),
                        norm=("GROUP", {"num_groups": 4}))
    scripted = tmp_path / "elsewhere" / "source.ts"
    scripted.parent.mkdir()
    torch.jit.script(network.eval()).save(str(scripted))
    before = snapshot(scripted)
    bundle = tmp_path / "bundle"
    overrides = {"source_ckpt": str(scripted), "train_source": False,
                 "source#network_def": "$torch.jit.load(@source_ckpt)"}  # as the README says
    with caplog.at_level("INFO"):
        run_bundle(CONFIGS, "training", bundle, fets_phantom, TINY, **overrides)
    assert f"target network initialised from source checkpoint {scripted}" in caplog.text
    assert len(risk_maps(bundle)) == TINY["num_target_train"] and (bundle / "models" / "model.pt").is_file()
    assert snapshot(scripted) == before


def test_foreign_source_checkpoint_that_does_not_fit_stops_the_bundle(tmp_path: Path, fets_phantom: str, zoo: Path) -> None:
    """The Zoo checkpoint into the tiny target network: one error naming the layer, both shapes and the remedy."""
    ckpt = zoo / "models" / "model.pt"
    before = snapshot(ckpt)
    cause = refusal(
        "training", tmp_path, fets_phantom, source_ckpt=str(ckpt), train_source=False,
        **{"source#network_def": f"%{zoo}/configs/inference.json::network_def", "num_source_classes": 3,
           "source_output": "sigmoid", "source_modality": "all", "risk#enabled": "false"},
    )
    assert isinstance(cause, ValueError), repr(cause)
    message = str(cause)
    assert f"source checkpoint {ckpt} does not fit the target network: layer convInit.conv.weight has shape " \
           "(16, 4, 3, 3, 3) in the checkpoint and (4, 1, 3, 3, 3) in the target network" in message
    assert "Remedy: make network_def the source's architecture" in message
    assert snapshot(ckpt) == before


def test_foreign_source_freeze_epochs_is_a_safe_transfer_candidate(tmp_path: Path, fets_phantom: str, caplog) -> None:
    """``freeze_epochs`` as one of the candidate starts of ``safe_training``: its own fingerprinted stage."""
    candidates = {"risk_map": {}, "frozen_head_first": {"freeze_epochs": 1}}
    with caplog.at_level("INFO"):
        run_bundle(CONFIGS, "safe_training", tmp_path, fets_phantom, {**TINY, "max_epochs": 2}, **{"safe#candidates": candidates})
    assert "transfer weights frozen for the first 1 epochs" in caplog.text and "every weight trains from now on" in caplog.text
    frozen = tmp_path / "models" / "candidates" / "frozen_head_first"
    assert json.loads((frozen / "finetune.fingerprint.json").read_text())["config"]["freeze_epochs"] == 1
    assert json.loads((frozen.parent / "risk_map" / "finetune.fingerprint.json").read_text())["config"]["freeze_epochs"] == 0
    assert (tmp_path / "models" / "model.pt").is_file()
