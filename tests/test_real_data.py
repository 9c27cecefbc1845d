"""The real-data profiles (``configs/real_data.json``) and the full-size phantoms they are checked on.

Fast: the profile parses together with every config it is documented with and sets the BraTS-bundle
settings. Slow: one source-training iteration of the profile on a full-size (240x240x155 / 144x192x256 at
1 mm) phantom case on CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bundle_helpers import run_bundle
from monai.bundle import ConfigWorkflow

from transrisk_components.data.registry import get_dataset

REPO = Path(__file__).resolve().parents[1]
BUNDLES = ("fets", "iseg")
FULL_SHAPES = {"fets": (240, 240, 155), "iseg": (144, 192, 256)}


def _configs(bundle: str, *names: str) -> list[str]:
    return [str(REPO / "bundles" / bundle / "configs" / name) for name in names]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_profile_parses_with_every_config(bundle, tmp_path):
    profile = json.loads(Path(_configs(bundle, "real_data.json")[0]).read_text())
    assert profile["patch_size"] == [128, 128, 128] and 16 <= profile["network_def#init_filters"] <= 32
    assert profile["learning_rate"] == 1e-4 and profile["max_epochs"] == 300  # MONAI's brats_mri_segmentation
    for names, ids in (
        (("train.json", "real_data.json"), ("network_def", "source#network_def", "loss", "validate#inferer")),
        (("train.json", "evaluate.json", "real_data.json"), ("network", "validate#inferer")),
        (("inference.json", "real_data.json"), ("network_def", "inferer")),
    ):
        workflow = ConfigWorkflow(config_file=_configs(bundle, *names), workflow_type=None, logging_file=False,
                                  bundle_root=str(tmp_path), dataset_dir=str(tmp_path))
        workflow.initialize()
        for name in ids:
            workflow.parser.get_parsed_content(name)
        assert list(workflow.parser.get_parsed_content("patch_size")) == [128, 128, 128]
        inferer = workflow.parser.get_parsed_content("inferer" if "inferer" in ids else "validate#inferer")
        assert list(inferer.roi_size) == [128, 128, 128]
        network = workflow.parser.get_parsed_content("network_def")
        assert network.convInit.conv.out_channels == 16 and len(network.down_layers) == 4


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES)
def test_profile_trains_one_iteration_on_a_full_size_case(bundle, tmp_path):
    spec = get_dataset(bundle)
    options = {"institutions": 1} if bundle == "fets" else {"labelled": 4}
    root = spec.make_phantom(tmp_path / "data", subjects=4, seed=0, full_size=True, **options)
    first = sorted(p for p in Path(root).rglob("*") if p.name.endswith((".nii.gz", ".hdr")))[0]
    header = nib.load(first)
    assert header.shape[:3] == FULL_SHAPES[bundle] and np.allclose(header.header.get_zooms()[:3], 1.0)
    settings = {"num_source": 1, "num_target_train": 1, "num_target_val": 1, "num_target_test": 1,
                "source_epochs": 1, "num_samples": 1, "num_workers": 0, "progress": False}
    workflow = run_bundle(REPO / "bundles" / bundle / "configs", "pretrain", tmp_path / "bundle", str(root), settings,
                          ("train.json", "real_data.json"))
    assert Path(workflow.parser.get_parsed_content("source_ckpt")).is_file()
