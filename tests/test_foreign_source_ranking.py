"""``rank_sources`` over heterogeneous candidates (issue #22 item 4): in one ranking the bundle's own source
(state_dict), a TorchScript copy of it, the Model Zoo BraTS network (4 channels, 3 sigmoid regions, its state_dict
under a key with DDP prefixes), a 4-channel softmax source on ``input_modality: all`` and a MONAI UNet; a candidate
whose input channels do not match its images is named before any inference. Tiny sizes: the FeTS phantom (32^3).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from bundle_helpers import RANK_TINY, rank_sources_parser, run_bundle
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import SegResNet, UNet
from monai.transforms import Compose, EnsureTyped, LoadImaged, NormalizeIntensityd

from transrisk_components.bundle.stages.ranking import EXTRA_COLUMNS, rank_sources
from transrisk_components.bundle.engine.transforms import TaskLabelsd
from transrisk_components.data.registry import get_dataset
from transrisk_components.data.scenario import Scenario
from transrisk_components.method.masks import image_mask
from transrisk_components.method.transferability import LEEPStatistics, pixel_transferability

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["background", "necrotic", "edema", "enhancing"]
ZOO_CHANNELS = ["t1ce", "t1", "t2", "flair"]


def tiny_segresnet(in_channels: int = 1, out_channels: int = 4) -> SegResNet:
    return SegResNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, init_filters=4,
                     blocks_down=(1, 2), blocks_up=(1,), norm=("GROUP", {"num_groups": 4}))


def zoo_brats_network() -> SegResNet:
    """The Model Zoo brats_mri_segmentation ``network_def`` (random weights)."""
    return SegResNet(spatial_dims=3, blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], init_filters=16,
                     in_channels=4, out_channels=3, dropout_prob=0.2)


def preprocessing() -> Compose:
    return Compose([
        LoadImaged(["image", "label"], reader="NibabelReader", image_only=True, ensure_channel_first=True),
        TaskLabelsd("label", dataset="fets", task="multiclass"),
        NormalizeIntensityd("image", nonzero=True, channel_wise=True),
        EnsureTyped("image", dtype=torch.float32),
    ])


@pytest.fixture(scope="module")
def scenario(data_fets_phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    return Scenario("fets", str(data_fets_phantom), str(tmp_path_factory.mktemp("scenario")), "t1", "flair",
                    "multiclass", "multiclass", 2, 1, 1, num_source=2, check_inputs=False)


def ranked(scenario: Scenario, candidates: list[dict], out: Path | None = None) -> list[dict]:
    return rank_sources(
        candidates, scenario.split("target_train"), preprocessing(), SlidingWindowInferer([16, 16, 16]), CLASSES, out,
        network_factory=lambda **kw: tiny_segresnet(**kw), target_modality="flair",
        datalist_for_modality=lambda m: scenario.split("target_train", modality=m), dataset_spec=get_dataset("fets"),
    )


@torch.no_grad()
def brute_force_sigmoid_leep(network: torch.nn.Module, cases: list[dict], k: int) -> float:
    """LEEP of a ``k``-region sigmoid source with ``p(z | v)`` written out as the product over the 2^k on/off states."""
    load, inferer = preprocessing(), SlidingWindowInferer([16, 16, 16])
    stats, kept = LEEPStatistics(len(CLASSES), 2**k), []
    for case in cases:
        item = load(dict(case))
        image = item["image"].as_tensor()[None]
        probs = torch.sigmoid(inferer(image, network)).double()
        states = torch.stack([
            torch.prod(torch.stack([probs[:, j] if (z >> j) & 1 else 1 - probs[:, j] for j in range(k)]), dim=0)
            for z in range(2**k)
        ], dim=1)
        label, mask = item["label"].as_tensor()[None].long(), image_mask(image, "nonzero")
        stats.update(states, label, mask)
        kept.append((states, label, mask))
    conditional = stats.conditional()
    log_t = torch.cat([torch.log(pixel_transferability(s, y, conditional).clamp_min(1e-12))[m] for s, y, m in kept])
    return float(log_t.mean())


def test_foreign_source_heterogeneous_candidates_in_one_ranking(scenario: Scenario, tmp_path: Path) -> None:
    torch.manual_seed(0)
    own = tiny_segresnet().eval()
    torch.save(own.state_dict(), tmp_path / "source.pt")
    torch.jit.save(torch.jit.script(own), tmp_path / "source_ts.pt")
    zoo = zoo_brats_network().eval()
    torch.save({"model": {f"module.{k}": v for k, v in zoo.state_dict().items()}, "epoch": 3}, tmp_path / "zoo.pt")
    multi = tiny_segresnet(in_channels=4).eval()
    torch.save(multi.state_dict(), tmp_path / "multi.pt")
    unet = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    torch.save(unet.state_dict(), tmp_path / "unet.pt")
    listed = [
        {"name": "own", "ckpt": str(tmp_path / "source.pt"), "modality": "t1"},
        {"name": "own_torchscript", "ckpt": str(tmp_path / "source_ts.pt")},  # detected, no network needed
        {"name": "zoo_brats", "ckpt": str(tmp_path / "zoo.pt"), "key_in_ckpt": "model", "output": "sigmoid",
         "input_modality": ZOO_CHANNELS, "modality": ZOO_CHANNELS,
         "network_def": {"_target_": "SegResNet", "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1],
                         "init_filters": 16, "in_channels": 4, "out_channels": 3, "dropout_prob": 0.2}},
        {"name": "multi_all", "ckpt": str(tmp_path / "multi.pt"), "input_modality": "all"},
        {"name": "unet", "ckpt": str(tmp_path / "unet.pt"),
         "network_def": {"_target_": "UNet", "spatial_dims": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0}},
    ]
    rows = {r["name"]: r for r in ranked(scenario, listed, tmp_path / "out")}
    assert set(rows) == {e["name"] for e in listed}
    assert all(math.isfinite(r["leep"]) for r in rows.values())
    assert rows["own_torchscript"]["leep"] == pytest.approx(rows["own"]["leep"], abs=1e-6)
    assert rows["own_torchscript"]["torchscript"] and math.isnan(rows["own_torchscript"]["gbc"])
    assert "TorchScript" in rows["own_torchscript"]["gbc_note"]
    assert math.isfinite(rows["own"]["gbc"]) and math.isfinite(rows["multi_all"]["gbc"])
    # this UNet ends in a transposed convolution: no per-voxel features, GBC nan and why, LEEP as for any other
    assert math.isnan(rows["unet"]["gbc"]) and "1x1x1 output layer" in rows["unet"]["gbc_note"]
    zoo_row = rows["zoo_brats"]
    assert (zoo_row["num_source_classes"], zoo_row["num_source_outputs"], zoo_row["source_output"]) == (8, 3, "sigmoid")
    inputs = scenario.split("target_train", modality=ZOO_CHANNELS)
    assert zoo_row["leep"] == pytest.approx(brute_force_sigmoid_leep(zoo, inputs, 3), abs=1e-6)
    assert rows["multi_all"]["input_channels"] == ZOO_CHANNELS and rows["multi_all"]["input_modality"] == "t1ce|t1|t2|flair"
    assert rows["unet"]["num_source_classes"] == 2
    with open(tmp_path / "out" / "source_ranking.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["name"] for r in table] == sorted(rows, key=lambda n: rows[n]["rank"])
    assert list(table[0])[-len(EXTRA_COLUMNS):] == list(EXTRA_COLUMNS), "new columns go at the end"
    by_name = {r["name"]: r for r in table}
    assert by_name["own_torchscript"]["gbc"] == "nan" and "TorchScript" in by_name["own_torchscript"]["gbc_note"]
    assert by_name["zoo_brats"]["num_source_classes"] == "8" and by_name["zoo_brats"]["num_source_outputs"] == "3"
    assert (tmp_path / "out" / "source_ranking.png").stat().st_size > 1000


def test_foreign_source_bad_entries_are_named_before_any_inference(
    scenario: Scenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transrisk_components.bundle.stages.ranking as ranking

    def no_inference(*args, **kwargs):
        raise AssertionError("inference ran before every candidate was checked")

    monkeypatch.setattr(ranking, "score_candidate", no_inference)
    torch.save(tiny_segresnet(in_channels=4).state_dict(), tmp_path / "four.pt")
    torch.save(tiny_segresnet().state_dict(), tmp_path / "one.pt")
    listed = [
        {"name": "four_on_one", "ckpt": str(tmp_path / "four.pt"), "input_modality": "t2"},
        {"name": "not_script", "ckpt": str(tmp_path / "one.pt"), "torchscript": True},
        {"name": "bad_key", "ckpt": str(tmp_path / "one.pt"), "key_in_ckpt": "state_dict"},
        {"name": "bad_output", "ckpt": str(tmp_path / "one.pt"), "output": "softplus"},
        {"name": "bad_modality", "ckpt": str(tmp_path / "one.pt"), "input_modality": "pd"},
        {"name": "fine", "ckpt": str(tmp_path / "one.pt")},
    ]
    with pytest.raises(ValueError) as error:
        ranked(scenario, listed)
    message = str(error.value)
    assert "5 of 6 candidate source model(s) cannot be used" in message
    assert "'four_on_one': its network takes in_channels=4" in message and "1 image(s) ['t2']" in message
    assert "'not_script': torchscript is true" in message and "'bad_key'" in message and "'state_dict'" in message
    assert "'bad_output': unknown output 'softplus'" in message and "'bad_modality'" in message
    assert "'fine'" not in message


@pytest.mark.parametrize("bundle", ["fets", "iseg"])
def test_foreign_source_entry_keys_in_the_bundles_rank_sources(
    bundle: str, tmp_path: Path, data_fets_phantom: Path, data_iseg_phantom: Path
) -> None:
    """The run id with a candidates file using every new key, on both bundles."""
    configs = REPO / "bundles" / bundle / "configs"
    phantom = str(data_fets_phantom if bundle == "fets" else data_iseg_phantom)
    tiny = RANK_TINY
    parser = rank_sources_parser(configs, tmp_path, phantom)
    factory = parser.get_parsed_content("rank#network_def")
    spec = get_dataset(bundle)
    classes = len(spec.tasks["multiclass"])
    all_channels = len(spec.all_order or spec.modalities)
    torch.manual_seed(0)
    own = factory(out_channels=classes).eval()
    models = tmp_path / "models"
    models.mkdir()
    torch.save({"model": {f"module.{k}": v for k, v in own.state_dict().items()}}, models / "wrapped.pt")
    torch.jit.save(torch.jit.script(own), models / "scripted.pt")
    torch.save(factory(out_channels=3).state_dict(), models / "sigmoid.pt")
    torch.save(factory(out_channels=2, in_channels=all_channels).state_dict(), models / "all.pt")
    listed = tmp_path / "candidates.json"
    listed.write_text(json.dumps([
        {"name": "wrapped", "ckpt": "models/wrapped.pt", "key_in_ckpt": "model"},
        {"name": "scripted", "ckpt": "models/scripted.pt", "torchscript": True},
        {"name": "sigmoid", "ckpt": "models/sigmoid.pt", "output": "sigmoid"},
        {"name": "all", "ckpt": "models/all.pt", "input_modality": "all"},
    ]))
    run_bundle(configs, "rank_sources", tmp_path, phantom, tiny, ("train.json", "rank_sources.json"),
               candidates_file=str(listed))
    with open(tmp_path / "eval" / "source_ranking.csv") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"wrapped", "scripted", "sigmoid", "all"}
    assert all(math.isfinite(float(r["leep"])) for r in rows.values())
    assert float(rows["scripted"]["leep"]) == pytest.approx(float(rows["wrapped"]["leep"]), abs=1e-6)
    assert rows["sigmoid"]["num_source_classes"] == "8" and rows["sigmoid"]["source_output"] == "sigmoid"
    assert rows["all"]["input_channels"] == "|".join(spec.all_order or spec.modalities)
