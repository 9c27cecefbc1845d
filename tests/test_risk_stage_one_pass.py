"""The risk stage runs the source model once per case: what pass 1 keeps on disk gives the maps a second source
pass would give (bit for bit with ``probabilities="float32"``, within a measured bound with ``"float16"``); the kept
files are temporaries; the cache key follows what changes the maps and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from bundle_helpers import TINY
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import SegResNet

from transrisk_components.bundle.workflow.pipeline import TransferPipeline
from transrisk_components.bundle.workflow.request import BundleRequest
from transrisk_components.bundle.stages.risk import RiskStage
from transrisk_components.bundle.stages.risk_cache import KEPT, MANIFEST, RiskCache
from transrisk_components.bundle.stages.risk_options import RiskMapOptions
from transrisk_components.data.registry import get_dataset
from transrisk_components.method.transferability import (
    LEEPStatistics,
    LocationLEEPStatistics,
    pixel_transferability,
)

CONFIGS = Path(__file__).resolve().parents[1] / "bundles"


class CountingInferer:
    """A sliding-window inferer that counts its calls (one per source pass over a case)."""

    def __init__(self) -> None:
        self.inferer = SlidingWindowInferer([16, 16, 16])
        self.calls = 0

    def __call__(self, image: torch.Tensor, network: torch.nn.Module) -> torch.Tensor:
        self.calls += 1
        return self.inferer(image, network)


def preprocessing() -> object:
    """The FeTS bundle's whole-volume preprocessing with the WT target task."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "fets" / "configs" / "train.json"))
    parser.update({"target_task": "WT"})
    return parser.get_parsed_content("validate#preprocessing")


def make_stage(cases: list[dict], tmp_path: Path, **options) -> RiskStage:
    """A risk stage (multiclass source, WT target) with a tiny source network of fixed random weights."""
    torch.manual_seed(0)
    network = SegResNet(spatial_dims=3, in_channels=1, out_channels=4, init_filters=4, blocks_down=(1, 2),
                        blocks_up=(1,), norm=("GROUP", {"num_groups": 4}))
    ckpt = tmp_path / "source.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), ckpt)
    key = "-".join(f"{k}={v}" for k, v in sorted(options.items())) or "default"
    return RiskStage("fets", cases, "multiclass", "WT", str(ckpt), network, preprocessing(), CountingInferer(),
                     str(tmp_path / "cache"), key, RiskMapOptions(**options))


def maps_of(stage: RiskStage, cases: list[dict]) -> list[np.ndarray]:
    manifest = stage.run()
    return [np.asarray(nib.load(stage.cache_root / stage.key / manifest["cases"][c["case_id"]]["risk"]).dataobj) for c in cases]


def two_pass_maps(stage: RiskStage, cases: list[dict]) -> tuple[list[np.ndarray], float]:
    """The maps and LEEP by the definition, with a second source pass over every case instead of kept files."""
    network = stage._load_network()
    with torch.no_grad():
        passes = [stage.passes.source_pass(network, case) for case in cases]  # pass 1: the statistics
        if stage.options.map_type == "location":
            stats = LocationLEEPStatistics(2, 4, passes[0][0].shape[2:], stage.options.location_patch)
            for probs, label, mask, _ in passes:
                stats.update(probs, label, mask)
            log_t = []
            for case in cases:  # pass 2: the source model again
                probs, label, mask, _ = stage.passes.source_pass(network, case)
                transferability = stats.transferability(probs, label)
                stats.update_leep(transferability, mask)
                log_t.append(torch.log(transferability[mask].double().clamp_min(1e-12)))
            location_t = stats.leep_map().nan_to_num(0.0).exp().to(torch.float32)[None, None]
            maps = [stage.passes.masked_map(stage.passes.risk(location_t[mask]), mask, c["case_id"])
                    for c, (_, _, mask, _) in zip(cases, passes)]
        else:
            stats = LEEPStatistics(2, 4)
            for probs, label, mask, _ in passes:
                stats.update(probs, label, mask)
            maps, log_t = [], []
            for case in cases:  # pass 2: the source model again
                probs, label, mask, _ = stage.passes.source_pass(network, case)
                transferability = pixel_transferability(probs, label, stats.conditional())
                log_t.append(torch.log(transferability[mask].double().clamp_min(1e-12)))
                maps.append(stage.passes.masked_map(stage.passes.risk(transferability[mask]), mask, case["case_id"]))
    every = torch.cat(log_t)
    return maps, float(every.sum()) / every.numel()


@pytest.mark.parametrize("options", [{}, {"map_type": "location"}, {"normalization": "neglog_minmax", "shuffle": True}],
                         ids=["pooled", "location", "neglog_shuffled"])
def test_one_source_pass_per_case_gives_the_two_pass_maps_bit_for_bit(
    flair_cases: list[dict], tmp_path: Path, options: dict
) -> None:
    stage = make_stage(flair_cases, tmp_path, **options)
    manifest = stage.run()
    assert stage.passes.inferer.calls == len(flair_cases), "the source model runs once per case"
    expected, leep = two_pass_maps(stage, flair_cases)
    for case, got, want in zip(flair_cases, maps_of(stage, flair_cases), expected):
        assert got.dtype == want.dtype == np.float32
        np.testing.assert_array_equal(got, want, err_msg=case["case_id"])
    assert manifest["leep"] == pytest.approx(leep, rel=1e-12)
    assert not (tmp_path / "cache" / manifest["key"] / KEPT).exists(), "the kept passes are deleted"


def test_float16_storage_moves_the_maps_by_little_and_has_its_own_cache_key(flair_cases: list[dict], tmp_path: Path) -> None:
    exact = make_stage(flair_cases, tmp_path / "exact", probabilities="float32")
    half = make_stage(flair_cases, tmp_path / "half", probabilities="float16")
    exact_manifest, half_manifest = exact.run(), half.run()
    worst = max(float(np.abs(a - b).max()) for a, b in zip(maps_of(exact, flair_cases), maps_of(half, flair_cases)))
    print(f"float16 storage: max |risk(float16) - risk(float32)| = {worst:.2e}")
    assert 0 < worst <= 2e-3
    assert half_manifest["leep"] == pytest.approx(exact_manifest["leep"], abs=1e-3)
    assert half.passes.inferer.calls == len(flair_cases)
    with pytest.raises(ValueError, match="unknown risk#probabilities 'int8'"):
        make_stage(flair_cases, tmp_path / "bad", probabilities="int8")


@pytest.mark.parametrize("bundle", ["fets", "iseg"])
def test_the_cache_key_follows_what_changes_the_maps(bundle: str, tmp_path: Path) -> None:
    """The risk stage's key is its fingerprint's digest: ``risk#probabilities float16`` and the risk mask change it;
    what fine-tuning does with the maps (the loss's strength, the dead-class margin) and where outputs go do not."""
    root = str(get_dataset(bundle).make_phantom(tmp_path / "data", subjects=9 if bundle == "fets" else 10, seed=0,
                                                shape=(16, 16, 16)))

    def key(**overrides: object) -> str:
        settings = {**TINY, "bundle_root": str(tmp_path / "b"), "dataset_dir": root, "num_target_train": 2,
                    "num_target_val": 1, "num_target_test": 1, **overrides}
        request = BundleRequest.create(CONFIGS / bundle / "configs" / "train.json", settings)
        return next(iter(TransferPipeline(request, "risk_map").plan(check_outputs=False).risks))

    default = key()
    assert key(**{"risk#probabilities": "float16"}) != default != key(**{"risk#mask": "all"})
    assert key(**{"risk#strength": 2.0, "risk#dead_class_margin": 0.2, "output_dir": str(tmp_path / "elsewhere")}) == default


def test_kept_files_of_a_killed_run_are_not_reused_and_a_failing_stage_removes_its_own(
    flair_cases: list[dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = make_stage(flair_cases, tmp_path)
    folder = tmp_path / "cache" / stage.key
    stale = folder / KEPT / "FeTS21_Training_999.pt"  # what a killed run left
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")

    def fail(*args: object, **kwargs: object) -> str:
        assert not stale.exists(), "left-overs are deleted before the stage computes"
        assert len(list((folder / KEPT).iterdir())) == len(flair_cases), "pass 1 kept one file per case"
        raise RuntimeError("disk full")

    monkeypatch.setattr(RiskCache, "write_map", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        stage.run()
    assert list((folder / KEPT).iterdir()) == [] and not (folder / MANIFEST).exists()
    monkeypatch.undo()
    assert set(stage.run()["cases"]) == {c["case_id"] for c in flair_cases}
    assert not (folder / KEPT).exists()


def test_a_cache_without_the_joint_is_computed_again(flair_cases: list[dict], tmp_path: Path) -> None:
    """A manifest written before it held ``P(y, z)`` (which ``head_init leep`` reads) is not a complete cache: the
    stage computes the same maps once more, with the joint."""
    first = make_stage(flair_cases, tmp_path)
    manifest = first.run()
    joint = np.asarray(manifest["joint"])
    assert joint.shape == (2, 4) and joint.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(joint / joint.sum(axis=0, keepdims=True), manifest["conditional"], atol=1e-12)
    maps = maps_of(first, flair_cases)
    path = tmp_path / "cache" / manifest["key"] / MANIFEST
    path.write_text(json.dumps({k: v for k, v in manifest.items() if k != "joint"}, indent=2))

    again = make_stage(flair_cases, tmp_path)
    np.testing.assert_array_equal(np.asarray(again.run()["joint"]), joint)
    assert again.passes.inferer.calls == len(flair_cases) and "joint" in json.loads(path.read_text())
    for got, want in zip(maps_of(again, flair_cases), maps):
        np.testing.assert_array_equal(got, want)
