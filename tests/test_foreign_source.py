"""A source described in config, not trained here: its outputs as LEEP states, its weights read and carried over,
multi-modal input (issue #22, items 1-3). Unit tests, without a bundle run; the bundle runs are in
``test_foreign_source_bundle.py``.

The Zoo brats network is the Model Zoo ``brats_mri_segmentation`` bundle's ``network_def`` (SegResNet, blocks_down
1-2-2-4, blocks_up 1-1-1, init_filters 16, 4 input channels T1ce, T1, T2, FLAIR, 3 sigmoid outputs TC, WT, ET), with
random weights saved as a ``state_dict``, as the Zoo's CI fakes them.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from monai.networks.nets import SegResNet
from monai.transforms import LoadImaged

from transrisk_components.bundle.engine.source_weights import SourceWeights, load_source_weights
from transrisk_components.bundle.engine.source_model import (
    adapt_input_weight,
    carry_over,
    default_source_inputs,
    is_torchscript,
    read_source_state,
)
from transrisk_components.data.registry import get_dataset, modality_channels
from transrisk_components.data.scenario import Scenario
from transrisk_components.method.source_outputs import num_source_states, sigmoid_states, source_states
from transrisk_components.method.transferability import LEEPStatistics

ZOO_CHANNELS = ("t1ce", "t1", "t2", "flair")


def zoo_brats_network(in_channels: int = 4, out_channels: int = 3) -> SegResNet:
    """The Model Zoo brats network (its ``configs/inference.json#network_def``), other channel counts on request."""
    return SegResNet(
        spatial_dims=3, blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], init_filters=16,
        in_channels=in_channels, out_channels=out_channels, dropout_prob=0.2,
    )


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


# --- item 1: a sigmoid source's categorical z --------------------------------------------------------------------


def test_foreign_source_sigmoid_states_equal_a_brute_force_product() -> None:
    torch.manual_seed(0)
    probs = torch.rand(2, 3, 4, 5, 6, dtype=torch.float64)
    states = sigmoid_states(probs)
    assert states.shape == (2, 8, 4, 5, 6)
    for z, bits in enumerate(itertools.product((0, 1), repeat=3)):
        bits = bits[::-1]  # itertools varies the last element fastest; bit j of z is region j
        assert z == sum(b << j for j, b in enumerate(bits))
        expected = torch.ones_like(probs[:, 0])
        for j, b in enumerate(bits):
            expected = expected * (probs[:, j] if b else 1 - probs[:, j])
        torch.testing.assert_close(states[:, z], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(states.sum(dim=1), torch.ones_like(probs[:, 0]), rtol=0, atol=1e-12)


def test_foreign_source_states_feed_leep_statistics() -> None:
    torch.manual_seed(1)
    logits = torch.randn(1, 3, 6, 6, 6)
    states = source_states(logits, "sigmoid")
    assert num_source_states(3, "sigmoid") == states.shape[1] == 8
    stats = LEEPStatistics(4, 8)
    stats.update(states, torch.randint(0, 4, (1, 1, 6, 6, 6)))  # the statistics' own check: p(z | v) sums to 1
    assert stats.conditional().shape == (4, 8)
    torch.testing.assert_close(source_states(logits, "softmax"), torch.softmax(logits, 1))
    with pytest.raises(ValueError, match="unknown source output 'tanh'"):
        source_states(logits, "tanh")
    with pytest.raises(ValueError, match="at most 8 channels"):
        num_source_states(9, "sigmoid")


# --- item 3: multi-modal input -----------------------------------------------------------------------------------


def test_foreign_source_modality_settings_name_the_channels() -> None:
    fets, iseg = get_dataset("fets"), get_dataset("iseg")
    assert modality_channels(fets, "flair") == ("flair",)
    assert modality_channels(fets, "all") == ZOO_CHANNELS, "the Model Zoo's BraTS order"
    assert modality_channels(fets, ["flair", "t1"]) == ("flair", "t1")
    assert modality_channels(iseg, "all") == ("T1", "T2")
    for bad in (["t1", "t1"], [], "dwi", ["flair", "T2"]):
        with pytest.raises(ValueError, match="target_modality .* is not a fets modality setting"):
            modality_channels(fets, bad, "target_modality")


def test_foreign_source_scenario_stacks_modalities_as_channels(data_fets_phantom: Path, tmp_path: Path) -> None:
    def scenario(source, target) -> Scenario:
        return Scenario("fets", str(data_fets_phantom), str(tmp_path), source, target, "multiclass", "multiclass",
                        2, 1, 1, num_source=2, check_inputs=False)

    single, multi = scenario("t1", "flair"), scenario("all", ["t1ce", "flair"])
    assert [c["case_id"] for c in single.split("target_train")] == [c["case_id"] for c in multi.split("target_train")]
    one = single.split("target_train")[0]
    assert len(one["image"]) == 1 and one["image"][0].endswith("_flair.nii.gz")
    source = multi.split("source")[0]
    assert [Path(p).name.split("_")[-1] for p in source["image"]] == [f"{m}.nii.gz" for m in ZOO_CHANNELS]
    train = multi.split("target_train")[0]
    assert [Path(p).name.split("_")[-1] for p in train["image"]] == ["t1ce.nii.gz", "flair.nii.gz"]
    other = multi.split("target_train", modality="all")[0]
    assert len(other["image"]) == 4 and other["case_id"] == train["case_id"]
    repeated = multi.split("target_train", modality=["flair"] * 4)[0]
    assert repeated["image"] == [train["image"][1]] * 4, "one image may feed every channel of a source"
    image = LoadImaged("image", reader="NibabelReader", image_only=True, ensure_channel_first=True)(train)["image"]
    assert tuple(image.shape) == (2, 32, 32, 32), "the loader stacks the modalities as channels"
    with pytest.raises(ValueError, match="source_modality 'pd' is not a fets modality setting"):
        scenario("pd", "flair")


# --- item 1: reading a foreign checkpoint --------------------------------------------------------------------------


def test_foreign_source_checkpoint_formats(tmp_path: Path) -> None:
    torch.manual_seed(2)
    network = zoo_brats_network().eval()
    reference = network.state_dict()
    plain, bundle, wrapped, script = (tmp_path / n for n in ("plain.pt", "bundle.pt", "ddp.pt", "model.ts"))
    torch.save(reference, plain)
    torch.save({"state_dict": reference, "epoch": 3}, bundle)
    torch.save({f"module.{k}": v for k, v in reference.items()}, wrapped)
    torch.jit.script(network).save(str(script))
    assert is_torchscript(script) and not is_torchscript(plain)
    for path, key in ((plain, None), (bundle, "state_dict"), (wrapped, None), (script, None)):
        state = read_source_state(path, key)
        assert state.keys() == reference.keys(), path
        assert all(torch.equal(state[k], reference[k]) for k in reference), path
    before = snapshot(bundle)
    with pytest.raises(ValueError, match=r"bundle\.pt has no entry 'network' \(key_in_ckpt\); it holds \['epoch', 'state_dict'\]"):
        read_source_state(bundle, "network")
    with pytest.raises(ValueError, match="holds no state_dict of tensors"):
        read_source_state(bundle)
    assert snapshot(bundle) == before


# --- item 2: weights carried over where shapes allow ---------------------------------------------------------------


def test_foreign_source_input_filters_follow_the_documented_rule() -> None:
    torch.manual_seed(3)
    weight = torch.randn(16, 4, 3, 3, 3)
    to_flair = adapt_input_weight(weight, ZOO_CHANNELS, ["flair"])  # 4 -> 1: FLAIR's filters, times 4
    torch.testing.assert_close(to_flair, 4 * weight[:, 3:4])
    to_two = adapt_input_weight(weight, ZOO_CHANNELS, ["flair", "t1ce"])
    torch.testing.assert_close(to_two, 2 * weight[:, [3, 0]])
    reordered = adapt_input_weight(weight, ZOO_CHANNELS, ["t1", "t1ce", "t2", "flair"])
    torch.testing.assert_close(reordered, weight[:, [1, 0, 2, 3]])
    one = weight[:, :1]
    from_t1 = adapt_input_weight(one, ["t1"], ZOO_CHANNELS)  # 1 -> 4: T1 kept, the others the mean (= T1), / 4
    torch.testing.assert_close(from_t1, one.expand(-1, 4, -1, -1, -1) / 4)
    torch.testing.assert_close(from_t1.sum(dim=1), one[:, 0]), "the response to equal inputs keeps its size"
    mixed = adapt_input_weight(weight[:, :2], ["t1ce", "t1"], ["t1", "flair", "t2"])
    torch.testing.assert_close(mixed, torch.stack([weight[:, 1], weight[:, :2].mean(1), weight[:, :2].mean(1)], 1) * 2 / 3)
    torch.testing.assert_close(adapt_input_weight(one, ["t1"], ["flair"]), one), "cross-modality 1 -> 1: as it is"


def test_foreign_source_inputs_follow_the_same_rule() -> None:
    assert default_source_inputs(["t1"], ["flair"]) == ("flair",), "the bundles' default transfer: the target's images"
    assert default_source_inputs(["t1"], ["t1"]) == ("t1",)
    assert default_source_inputs(ZOO_CHANNELS, ["flair"]) == ZOO_CHANNELS, "by name: the source's own modalities"
    assert default_source_inputs(ZOO_CHANNELS, ["t1", "t1ce", "t2", "flair"]) == ZOO_CHANNELS, "in the source's order"
    assert default_source_inputs(["t1"], ZOO_CHANNELS) == ("t1",)
    assert default_source_inputs(["t1ce", "t1"], ["t2", "flair"]) == ("t2", "flair")


@pytest.mark.parametrize(("source_channels", "target_channels"), [(ZOO_CHANNELS, ("flair",)), (("t1",), ZOO_CHANNELS)])
def test_foreign_source_zoo_network_carries_over_into_other_channels_and_classes(
    tmp_path: Path, source_channels: tuple[str, ...], target_channels: tuple[str, ...], caplog
) -> None:
    torch.manual_seed(4)
    source = zoo_brats_network(len(source_channels), 3)
    ckpt = tmp_path / "models_model.pt"
    torch.save(source.state_dict(), ckpt)
    before = snapshot(ckpt)
    target = zoo_brats_network(len(target_channels), 4)
    with caplog.at_level("INFO"):
        load_source_weights(target, ckpt, 3, 4, source_channels, target_channels)
    assert "input layer convInit.conv.weight adapted" in caplog.text and "output head re-initialised" in caplog.text
    mine, theirs = target.state_dict(), source.state_dict()
    expected = adapt_input_weight(theirs["convInit.conv.weight"], source_channels, target_channels)
    torch.testing.assert_close(mine["convInit.conv.weight"], expected)
    head = {"conv_final.2.conv.weight", "conv_final.2.conv.bias"}
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs if k not in head | {"convInit.conv.weight"})
    assert all(mine[k].shape[0] == 4 for k in head)
    with torch.no_grad():
        assert target(torch.randn(1, len(target_channels), 16, 16, 16)).shape == (1, 4, 16, 16, 16)
    assert snapshot(ckpt) == before, "the user's checkpoint is only read"


def test_foreign_source_checkpoint_that_does_not_fit_names_the_layer_and_the_remedy(tmp_path: Path) -> None:
    ckpt = tmp_path / "zoo.pt"
    torch.save(zoo_brats_network().state_dict(), ckpt)
    before = snapshot(ckpt)
    narrow = SegResNet(spatial_dims=3, blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], init_filters=8, in_channels=1,
                       out_channels=4)
    with pytest.raises(ValueError) as error:
        load_source_weights(narrow, ckpt, 3, 4, ZOO_CHANNELS, ("flair",))
    message = str(error.value)
    assert (
        f"source checkpoint {ckpt} does not fit the target network: layer convInit.conv.weight has shape "
        "(16, 4, 3, 3, 3) in the checkpoint and (8, 1, 3, 3, 3) in the target network (and 81 more layers)"
    ) in message
    assert "Remedy: make network_def the source's architecture" in message
    assert "--target_init random" in message and "The checkpoint was not changed" in message
    shallow = SegResNet(spatial_dims=3, blocks_down=[1, 2], blocks_up=[1], init_filters=16, in_channels=4, out_channels=3)
    with pytest.raises(ValueError, match=r"layer up_layers\.0\.0\.conv1\.conv\.weight has shape \(64, 64, 3, 3, 3\) in the checkpoint and \(16, 16, 3, 3, 3\)"):
        carry_over(shallow, read_source_state(ckpt), 3, 3, ZOO_CHANNELS, ZOO_CHANNELS, ckpt)
    assert snapshot(ckpt) == before


def test_foreign_source_freeze_epochs_train_only_the_head_first(tmp_path: Path) -> None:
    from ignite.engine import Engine

    ckpt = tmp_path / "source.pt"
    torch.save(zoo_brats_network(1, 4).state_dict(), ckpt)
    target = zoo_brats_network(1, 4)
    handler = SourceWeights(target, "source", ckpt, 4, 4, source_channels=("t1",), target_channels=("flair",), freeze_epochs=1)
    seen: list[int] = []

    def step(engine: Engine, batch: None) -> None:
        seen.append(sum(p.requires_grad for p in target.parameters()))

    engine = Engine(step)
    handler.attach(engine)
    engine.run([None], max_epochs=2)
    assert seen == [2, len(list(target.parameters()))], "epoch 1: the output layer only; epoch 2: every weight"
    with pytest.raises(ValueError, match="freeze_epochs must be >= 0"):
        SourceWeights(target, "source", ckpt, 4, 4, freeze_epochs=-1)


def test_foreign_source_sigmoid_output_is_never_trained_here() -> None:
    from transrisk_components.bundle.workflow.settings import SettingsError, check_settings

    with pytest.raises(SettingsError, match=r"source_output 'sigmoid': describes a source from elsewhere.*--train_source false"):
        check_settings({"source_output": "sigmoid", "train_source": True}, "the source stage")
    check_settings({"source_output": "sigmoid", "train_source": False}, "the run")


def test_foreign_source_risk_stage_with_a_sigmoid_multichannel_source_equals_a_brute_force_leep(
    data_fets_phantom: Path, tmp_path: Path
) -> None:
    """A 2-channel (T1ce, FLAIR) sigmoid source with 3 regions over FLAIR target cases: the stage's LEEP is the mean
    ``log T`` of a reference that builds ``p(z | v)`` by brute force over the 8 on/off combinations."""
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import Compose, EnsureTyped, NormalizeIntensityd

    from transrisk_components.bundle.stages.risk import RiskStage
    from transrisk_components.bundle.stages.risk_options import RiskMapOptions
    from transrisk_components.method.masks import image_mask
    from transrisk_components.bundle.engine.transforms import TaskLabelsd
    from transrisk_components.method.transferability import pixel_transferability

    scenario = Scenario("fets", str(data_fets_phantom), str(tmp_path), "t1", "flair", "multiclass", "multiclass",
                        2, 1, 1, num_source=2, check_inputs=False)
    cases, inputs = scenario.split("target_train"), scenario.split("target_train", modality=["t1ce", "flair"])
    torch.manual_seed(5)
    network = SegResNet(spatial_dims=3, in_channels=2, out_channels=3, init_filters=4, blocks_down=(1, 2), blocks_up=(1,),
                        norm=("GROUP", {"num_groups": 4})).eval()
    ckpt = tmp_path / "elsewhere" / "model.pt"
    ckpt.parent.mkdir()
    torch.save({"model_state": network.state_dict()}, ckpt)
    load = Compose([
        LoadImaged(["image", "label"], reader="NibabelReader", image_only=True, ensure_channel_first=True),
        TaskLabelsd("label", dataset="fets", task="multiclass"),
        NormalizeIntensityd("image", nonzero=True, channel_wise=True),
        EnsureTyped("image", dtype=torch.float32),
    ])
    inferer = SlidingWindowInferer([16, 16, 16])
    stage = RiskStage("fets", cases, "multiclass", "multiclass", str(ckpt), network, load, inferer,
                      str(tmp_path / "cache"), "sigmoid", RiskMapOptions(source_output="sigmoid", key_in_ckpt="model_state"),
                      num_source_outputs=3, source_datalist=inputs)
    manifest = stage.run()
    assert len(manifest["conditional"][0]) == 8

    reference = LEEPStatistics(4, 8)
    kept = []
    with torch.no_grad():
        for case, source_case in zip(cases, inputs):
            item, source_item = load(case), load(source_case)
            probs = torch.sigmoid(inferer(source_item["image"].as_tensor()[None], network)).double()  # [1, 3, *S]
            states = torch.stack([
                torch.prod(torch.stack([probs[:, j] if (z >> j) & 1 else 1 - probs[:, j] for j in range(3)]), dim=0)
                for z in range(8)
            ], dim=1)  # [1, 8, *S], each state's product written out
            label = item["label"].as_tensor()[None].long()
            mask = image_mask(item["image"].as_tensor()[None], "nonzero")
            reference.update(states, label, mask)
            kept.append((states, label, mask))
    conditional = reference.conditional()
    torch.testing.assert_close(torch.tensor(manifest["conditional"], dtype=torch.float64), conditional, atol=1e-6, rtol=0)
    log_t = torch.cat([torch.log(pixel_transferability(s, y, conditional).clamp_min(1e-12))[m] for s, y, m in kept])
    assert manifest["leep"] == pytest.approx(float(log_t.mean()), abs=1e-6)


def test_foreign_source_real_layout_reader_stacks_t1gd_named_files_in_zoo_order(data_fets_phantom: Path, tmp_path: Path) -> None:
    """The real-data reader under ``modality all``: a subject whose T1ce file is named ``_t1gd`` (as in some FeTS
    releases) gets it as its first channel, the Zoo's order."""
    import shutil

    root = tmp_path / "MICCAI_FeTS2021_TrainingData"
    shutil.copytree(data_fets_phantom, root)
    renamed = root / "FeTS21_Training_001"
    (renamed / "FeTS21_Training_001_t1ce.nii.gz").rename(renamed / "FeTS21_Training_001_t1gd.nii.gz")
    scenario = Scenario("fets", str(root), str(tmp_path / "out"), "all", "all", "multiclass", "multiclass", 2, 1, 1,
                        check_inputs=False)
    cases = {c["case_id"]: c for name in ("source", "target_train", "target_val", "target_test") for c in scenario.split(name)}
    suffixes = [Path(p).name.removeprefix("FeTS21_Training_001_") for p in cases["FeTS21_Training_001"]["image"]]
    assert suffixes == ["t1gd.nii.gz", "t1.nii.gz", "t2.nii.gz", "flair.nii.gz"]
