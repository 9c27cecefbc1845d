"""The risk-map variants as bundle options: the location-wise map in the risk stage (and its refusal for data that
is not co-registered), risk-guided patch sampling in ``train#preprocessing``, and one tiny training run with both."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import TINY, risk_maps, run_bundle
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import SegResNet
from monai.transforms import RandCropByPosNegLabeld, RandWeightedCropd

from transrisk_components.bundle.workflow.settings import SettingsError, check_settings
from transrisk_components.bundle.stages.risk import RiskStage
from transrisk_components.bundle.stages.risk_options import RiskMapOptions

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "fets" / "configs"


def config_item(id: str, **overrides) -> object:
    """One parsed item of the FeTS bundle's ``train.json`` with ``overrides``."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update(overrides)
    return parser.get_parsed_content(id)


def location_stage(cases: list[dict], tmp_path: Path, dataset: str = "fets", **kw) -> RiskStage:
    """A location-wise risk stage over ``cases`` with a tiny source network of fixed random weights."""
    torch.manual_seed(0)
    network = SegResNet(spatial_dims=3, in_channels=1, out_channels=4, init_filters=4, blocks_down=(1, 2),
                        blocks_up=(1,), norm=("GROUP", {"num_groups": 4}))
    ckpt = tmp_path / "source.pt"
    torch.save(network.state_dict(), ckpt)
    options = {"map_type": "location", "location_patch": 8, **kw}
    return RiskStage(
        dataset, cases, "multiclass", "WT", str(ckpt), network,
        config_item("validate#preprocessing", target_task="WT"), SlidingWindowInferer([16, 16, 16]),
        str(tmp_path / "cache"), "location", RiskMapOptions(**options),
    )


def test_location_map_is_one_map_per_location_shared_by_every_case(flair_cases: list[dict], tmp_path: Path) -> None:
    """Pooled maps differ from case to case and voxel to voxel; the location-wise map is one value per 8^3
    location, ``1 - exp(LEEP_l)``, the same in every case wherever the case's mask covers it."""
    stage = location_stage(flair_cases, tmp_path)
    manifest = stage.run()
    assert manifest["map"] == "location" and manifest["num_locations"] == 4**3 and manifest["leep"] <= 0
    assert np.asarray(manifest["conditional"]).shape == (2, 4) and set(manifest["classes"]) == {"background", "WT"}
    maps = [np.asarray(nib.load(tmp_path / "cache" / "location" / manifest["cases"][c["case_id"]]["risk"]).dataobj)
            for c in flair_cases]
    brains = [np.asarray(nib.load(c["image"][0]).dataobj) != 0 for c in flair_cases]
    for risk, brain in zip(maps, brains):
        assert np.all(risk[~brain] == 0) and np.all((risk >= 0) & (risk <= 1)) and risk[brain].max() > 0
        cubes = risk.reshape(4, 8, 4, 8, 4, 8).transpose(0, 2, 4, 1, 3, 5).reshape(64, -1)
        inside = brain.reshape(4, 8, 4, 8, 4, 8).transpose(0, 2, 4, 1, 3, 5).reshape(64, -1)
        for values, covered in zip(cubes, inside):
            if covered.any():
                assert np.ptp(values[covered]) == 0, "one value per location"
    shared = brains[0] & brains[1]
    np.testing.assert_array_equal(maps[0][shared], maps[1][shared])


def test_location_map_is_refused_for_data_that_is_not_co_registered(flair_cases: list[dict], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="iseg cases are not"):
        location_stage(flair_cases, tmp_path, dataset="iseg")
    moved = tmp_path / "moved"  # one case whose image lies elsewhere in space (another affine, same shape)
    moved.mkdir()
    image = nib.load(flair_cases[1]["image"][0])
    affine = image.affine.copy()
    affine[:3, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine), moved / "flair.nii.gz")
    shutil.copy(flair_cases[1]["label"], moved / "seg.nii.gz")
    bad = [flair_cases[0], {**flair_cases[1], "image": [str(moved / "flair.nii.gz")]}, flair_cases[2]]
    with pytest.raises(ValueError, match=f"{flair_cases[1]['case_id']} .*not co-registered"):
        location_stage(bad, tmp_path).run()
    with pytest.raises(ValueError, match="unknown risk map"):
        location_stage(flair_cases, tmp_path, map_type="atlas")


def test_risk_sampling_centres_every_patch_where_the_map_is(flair_cases: list[dict], tmp_path: Path) -> None:
    case = flair_cases[0]
    label = nib.load(case["label"])
    risk = np.zeros(label.shape, np.float32)
    risk[20:22, 8:10, 12:14] = 1.0  # risk in one 2^3 cube of the brain
    risk_path = tmp_path / "risk.nii.gz"
    nib.save(nib.Nifti1Image(risk, label.affine), risk_path)
    settings = {"patch_size": [8, 8, 8], "num_samples": 8}
    by_risk = config_item("train#preprocessing", **settings, **{"risk#sampling": "risk"})
    assert [type(t) for t in by_risk.transforms if "Crop" in type(t).__name__ and "Foreground" not in type(t).__name__] == [RandWeightedCropd]
    by_risk.set_random_state(0)
    samples = by_risk({**case, "risk": str(risk_path), "foreground_voxels": 7})
    assert len(samples) == 8 and all(s["image"].shape == (2, 8, 8, 8) and "risk" not in s for s in samples)
    assert all(s["image"][1].sum() > 0 and s["foreground_voxels"] == 7 for s in samples), "every centre in the cube"
    by_label = config_item("train#preprocessing", **settings)
    assert RandCropByPosNegLabeld in [type(t) for t in by_label.transforms]
    assert RandWeightedCropd not in [type(t) for t in by_label.transforms]
    by_label.set_random_state(0)
    assert any(s["image"][1].sum() == 0 for s in by_label({**case, "risk": str(risk_path)})), "label sampling ignores it"
    with pytest.raises(SettingsError, match=r"risk#sampling 'risky': must be one of \['posneg', 'risk'\]"):
        check_settings({"risk#sampling": "risky"}, "the run")
    with pytest.raises(SettingsError, match="risk#sampling 'risk': samples patch centres by the risk map, so risk#enabled"):
        check_settings({"risk#sampling": "risk", "risk#enabled": False}, "the run")


def test_training_with_the_location_map_and_risk_sampling(data_fets_phantom_9: str, tmp_path: Path) -> None:
    options = {"risk#map": "location", "risk#sampling": "risk", "risk#scheme": "inverse", "risk#dice": "weighted",
               "risk#ce_voxels": "foreground", "risk#ce_denominator": "foreground"}
    run_bundle(CONFIGS, "training", tmp_path, data_fets_phantom_9, TINY, **options)
    assert (tmp_path / "models" / "model.pt").is_file() and len(risk_maps(tmp_path)) == TINY["num_target_train"]
    config = json.loads((tmp_path / "models" / "finetune.fingerprint.json").read_text())["config"]
    assert config["risk#sampling"] == "risk" and config["risk#ce_voxels"] == "foreground"
