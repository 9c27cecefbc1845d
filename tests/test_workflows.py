"""Unit tests of the stage modules: bundle paths, scenario splits, transforms, training wiring, risk stage."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, Randomizable
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import SegResNet, UNet

from transrisk_components.bundle.io.paths import _from_argv
from transrisk_components.bundle.io.config_values import as_bool
from transrisk_components.data.registry import get_dataset
from transrisk_components.bundle.io.inference import InferenceCases, inference_datalist
from transrisk_components.method.losses import RiskWeightedLoss
from transrisk_components.bundle.io.risk_manifest import TrainingCases
from transrisk_components.bundle.stages.risk import RiskStage
from transrisk_components.bundle.stages.risk_options import RiskMapOptions
from transrisk_components.data.scenario import Scenario, resolve_dataset_dir
from transrisk_components.bundle.engine.batches import (
    RiskTargets,
    TransferLoss,
    batch_preparer,
    prepare_risk_batch,
    training_loss,
)
from transrisk_components.bundle.engine.source_weights import load_source_weights
from transrisk_components.bundle.handlers.checkpoints import ResumableCheckpoints
from transrisk_components.bundle.engine.transforms import TaskLabelsd

FETS_TRAIN = Path(__file__).resolve().parents[1] / "bundles" / "fets" / "configs" / "train.json"


def config_item(id: str, **overrides) -> object:
    """One parsed item of the FeTS bundle's ``train.json`` with ``overrides`` (e.g. a transform chain)."""
    parser = ConfigParser()
    parser.read_config(str(FETS_TRAIN))
    parser.update(overrides)
    return parser.get_parsed_content(id)


def small_network(name: str, out_channels: int, width: int = 4) -> torch.nn.Module:
    """A two-level SegResNet (as the bundles' ``network_def`` with tiny settings) or UNet."""
    if name == "segresnet":
        return SegResNet(spatial_dims=3, in_channels=1, out_channels=out_channels, init_filters=width,
                         blocks_down=(1, 2), blocks_up=(1,), norm=("GROUP", {"num_groups": min(width, 8)}))
    return UNet(spatial_dims=3, in_channels=1, out_channels=out_channels, channels=(width, 2 * width), strides=(2,))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = get_dataset("fets").make_phantom(tmp_path_factory.mktemp("fets"), subjects=9, seed=0, shape=(32, 32, 32))
    return str(root)


def _scenario(phantom: str, out: Path, **kw) -> Scenario:
    args = dict(
        dataset="fets",
        dataset_dir=phantom,
        output_dir=str(out),
        source_modality="t1",
        target_modality="flair",
        source_task="multiclass",
        target_task="multiclass",
        num_target_train=2,
        num_target_val=1,
        num_target_test=2,
        seed=0,
    )
    return Scenario(**{**args, **kw})


def test_bundle_root_comes_from_the_config_file_argument(tmp_path: Path) -> None:
    config = tmp_path / "bundle" / "configs" / "train.json"
    assert _from_argv(["monai.bundle", "run", "--config_file", str(config)]) == tmp_path / "bundle"
    assert _from_argv([f"--config_file=['{config}', 'x.json']"]) == tmp_path / "bundle"
    assert _from_argv(["run"]) is None


def test_as_bool_reads_command_line_spellings() -> None:
    assert as_bool("false") is False and as_bool("True") is True and as_bool(0) is False
    with pytest.raises(ValueError, match="risk#enabled"):
        as_bool("maybe", "risk#enabled")


def test_splits_are_deterministic_disjoint_and_written(phantom: str, tmp_path: Path) -> None:
    first = _scenario(phantom, tmp_path / "a").prepare()
    second = _scenario(phantom, tmp_path / "b").prepare()
    assert first == second and not (tmp_path / "a" / "splits.json").exists(), "preparing writes no splits.json"
    _scenario(phantom, tmp_path / "a").write_splits()
    ids = [c["case_id"] for cases in first.values() for c in cases]
    assert len(ids) == len(set(ids)) == 9
    assert all(c["image"][0].endswith("_flair.nii.gz") for c in first["target_train"])
    assert all(c["image"][0].endswith("_t1.nii.gz") for c in first["source"])
    assert json.loads((tmp_path / "a" / "splits.json").read_text())["splits"] == first
    assert _scenario(phantom, tmp_path / "c", seed=1).prepare() != first


def _ranked(splits: dict[str, list[dict]]) -> list[str]:
    """Case ids in rank order (with every remaining case as source, the source comes last)."""
    return [c["case_id"] for name in ("target_test", "target_val", "target_train", "source") for c in splits[name]]


def test_a_few_shot_curve_shares_test_validation_and_source_cases(phantom: str, tmp_path: Path) -> None:
    """Only the training set depends on its size, and the smaller training sets are part of the larger ones."""
    curve = {n: _scenario(phantom, tmp_path / str(n), num_target_train=n, num_source=3).prepare() for n in (1, 2, 3)}
    for name in ("target_test", "target_val", "source"):
        assert curve[1][name] == curve[2][name] == curve[3][name], name
    train = {n: [c["case_id"] for c in splits["target_train"]] for n, splits in curve.items()}
    assert len(train[3]) == 3 and train[1] == train[2][:1] and train[2] == train[3][:2]
    with pytest.raises(ValueError, match="too few labelled target cases .* for 5 target training cases: 3 are left"):
        _scenario(phantom, tmp_path / "5", num_target_train=5, num_source=3).prepare()


def test_a_case_without_label_is_named_and_the_other_cases_keep_their_places(
    phantom: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Old code: the case vanished without a word and every split reshuffled."""
    import shutil

    full = _scenario(phantom, tmp_path / "full").prepare()
    for gone in (full["target_train"][0]["case_id"], full["source"][-1]["case_id"]):
        copy = tmp_path / f"data_{gone}"
        shutil.copytree(phantom, copy)
        next(copy.rglob(f"{gone}_seg.nii.gz")).unlink()
        with caplog.at_level("WARNING"):
            scenario = _scenario(str(copy), tmp_path / f"out_{gone}")
            splits = scenario.prepare()
            scenario.write_splits()
        assert f"have no label file and are left out of every split: {gone}" in caplog.text
        assert json.loads((tmp_path / f"out_{gone}" / "splits.json").read_text())["unlabelled"] == [gone]
        assert _ranked(splits) == [i for i in _ranked(full) if i != gone]
    targets = ("target_train", "target_val", "target_test")
    assert [[c["case_id"] for c in full[n]] for n in targets] == [[c["case_id"] for c in splits[n]] for n in targets], (
        "removing a source case must leave every target split as it was"
    )


def test_cross_site_splits_follow_the_partitions(phantom: str, tmp_path: Path) -> None:
    scenario = _scenario(
        phantom, tmp_path, partition_csv="partitioning_1.csv", source_partitions=[1, 2], target_partitions=[3],
        num_target_train=1, num_target_val=1, num_target_test=1,
    )
    splits = scenario.prepare()
    assert splits["source"] and splits["target_test"]
    with pytest.raises(ValueError, match="overlap"):
        _scenario(phantom, tmp_path, partition_csv="partitioning_1.csv", source_partitions=[1], target_partitions=[1]).prepare()


def test_missing_dataset_dir_is_an_error_unless_it_is_the_phantom(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_dataset_dir("fets", str(tmp_path / "nowhere"), phantom_dir=str(tmp_path / "phantom"))


def test_spatial_transforms_keep_risk_aligned_with_the_label(phantom: str, tmp_path: Path) -> None:
    case = _scenario(phantom, tmp_path).split('target_train')[0]
    label = nib.load(case["label"])
    risk_path = tmp_path / "risk.nii.gz"
    nib.save(nib.Nifti1Image((np.asarray(label.dataobj) > 0).astype(np.float32), label.affine), risk_path)
    chain = config_item("train#preprocessing", target_task="WT", patch_size=[16, 16, 16], num_samples=4)
    for sample in chain({**case, "risk": str(risk_path)}):
        assert sample["image"].shape == (2, 16, 16, 16) and sample["label"].shape == (1, 16, 16, 16)
        assert sample["label"].dtype == torch.uint8 and not [k for k in sample if k.endswith("_indices") or k == "risk"]
        assert torch.equal(sample["label"].as_tensor().float(), sample["image"][1:].as_tensor())


@pytest.mark.parametrize("sampling", ["posneg", "risk"])
def test_the_map_stays_the_same_function_of_the_image_through_the_random_transforms(
    phantom: str, tmp_path: Path, sampling: str
) -> None:
    """A map that is a function of the image (here its raw intensity / its maximum) is, in every training patch,
    that function of the patch's image: cut from the same place, flipped the same way, and bit for bit the values
    written (a map stored or carried at lower precision, e.g. float16, fails the last check)."""
    case = _scenario(phantom, tmp_path).split("target_train")[0]
    image = nib.load(case["image"][0])
    raw = np.asarray(image.dataobj, dtype=np.float32)
    risk = raw / raw.max()
    risk_path = tmp_path / "risk.nii.gz"
    nib.save(nib.Nifti1Image(risk, image.affine), risk_path)
    chain = config_item("train#preprocessing", patch_size=[16, 16, 16], num_samples=8, **{"risk#sampling": sampling})
    chain.set_random_state(0)
    samples = chain({**case, "risk": str(risk_path), "foreground_voxels": 1})
    flipped = 0
    for sample in samples:
        patch, patch_risk = sample["image"][0].as_tensor(), sample["image"][1].as_tensor()  # [16, 16, 16] each
        inside = patch_risk != 0
        assert torch.equal(inside, patch != 0), "the map's brain is the image's brain"
        # NormalizeIntensityd maps the image's brain voxels by one increasing affine map: the map's values are that
        # map's preimage, to float rounding, in the same voxels
        slope, offset = np.polyfit(patch_risk[inside].double().numpy(), patch[inside].double().numpy(), 1)
        assert slope > 0 and np.allclose(slope * patch_risk[inside].double().numpy() + offset, patch[inside].numpy(), atol=1e-4)
        assert torch.isin(patch_risk, torch.from_numpy(risk)).all(), "values as written (float32), not rounded"
        flipped += not torch.equal(patch_risk, patch_risk.flip(0))
    assert flipped, "the patches are not all symmetric: a flip of one channel only would have been seen"


def test_the_risk_batch_is_split_from_the_image_on_the_device() -> None:
    """The map travels as the image's last channel; ``prepare_risk_batch`` hands out views of the moved batch."""
    packed = torch.rand(2, 3, 4, 4, 4)
    image, targets = prepare_risk_batch({"image": packed, "label": torch.zeros(2, 1, 4, 4, 4)}, "cpu", image_channels=2)
    assert torch.equal(image, packed[:, :2]) and torch.equal(targets.risk, packed[:, 2:]) and targets.foreground_voxels is None
    assert image.data_ptr() == targets.risk.data_ptr() - 2 * 64 * 4 == packed.data_ptr(), "views, not copies"
    with pytest.raises(ValueError, match="has 3 channels, expected 3 image channels and the risk map"):
        prepare_risk_batch({"image": packed, "label": torch.zeros(2, 1, 4, 4, 4)}, "cpu", image_channels=3)


def test_task_labels_map_raw_values() -> None:
    raw = torch.tensor([[[[0, 1, 2, 4]]]])
    assert TaskLabelsd("label", "fets", "TC")({"label": raw})["label"].flatten().tolist() == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="unknown fets task"):
        TaskLabelsd("label", "fets", "XX")


def test_risk_reaches_the_loss_through_the_batch() -> None:
    risk = torch.rand(2, 1, 8, 8, 8)
    batch = {
        "image": torch.cat([torch.rand(2, 1, 8, 8, 8), risk], dim=1),
        "label": torch.randint(0, 2, (2, 1, 8, 8, 8)),
        "foreground_voxels": torch.tensor([900, 0]),
    }
    image, targets = batch_preparer(True, 1)(batch, "cpu")
    assert isinstance(targets, RiskTargets) and torch.equal(targets.risk, risk) and image.shape == risk.shape
    assert torch.equal(targets.foreground_voxels, batch["foreground_voxels"])
    logits = torch.randn(2, 2, 8, 8, 8)
    expected = RiskWeightedLoss()(logits, batch["label"], risk, batch["foreground_voxels"])
    assert torch.allclose(training_loss(True)(logits, targets), expected)
    assert torch.isfinite(training_loss(False)(logits, batch["label"]))
    with pytest.raises(TypeError, match="cannot use it"):
        TransferLoss(torch.nn.MSELoss())(logits, targets)
    with pytest.raises(ValueError, match="risk map as the last one"):
        batch_preparer(True, 1)({"image": batch["image"][:, :1], "label": batch["label"]}, "cpu")


def test_trainer_batches_reach_the_network_as_plain_tensors_without_a_copy() -> None:
    """MetaTensors would carry their metadata through every layer of every training step."""
    image, label = MetaTensor(torch.rand(1, 2, 4, 4, 4)), MetaTensor(torch.rand(1, 1, 4, 4, 4))
    for preparer, batch in ((batch_preparer(False, 2), {"image": image, "label": label}),
                            (batch_preparer(True, 1), {"image": image, "label": label})):
        inputs, targets = preparer(batch, "cpu")
        tensors = [inputs, *(targets if isinstance(targets, RiskTargets) else [targets])]
        tensors = [t for t in tensors if t is not None]
        assert all(type(t) is torch.Tensor for t in tensors)
        assert inputs.data_ptr() == image.data_ptr(), "the same storage, not a copy"


@pytest.mark.parametrize("name", ["segresnet", "unet"])
def test_source_weights_transfer_with_a_new_head(name: str, tmp_path: Path, caplog) -> None:
    source = small_network(name, 4)
    ckpt = tmp_path / "source.pt"
    torch.save(source.state_dict(), ckpt)
    with caplog.at_level("INFO"):
        target = load_source_weights(small_network(name, 2), ckpt, 4, 2)
    assert "output head re-initialised" in caplog.text
    shared = [k for k, v in source.state_dict().items() if v.shape == target.state_dict()[k].shape]
    assert all(torch.equal(source.state_dict()[k], target.state_dict()[k]) for k in shared)
    with pytest.raises(ValueError, match=r"source\.pt does not fit"):
        load_source_weights(small_network(name, 4, width=8), ckpt, 4, 4)
    with pytest.raises(FileNotFoundError, match="pretrain"):
        load_source_weights(target, tmp_path / "none.pt", 4, 2)


def _risk_stage(cases: list[dict], tmp_path: Path, key: str = "test", **kw) -> RiskStage:
    """A risk stage over ``cases`` with a tiny source network of fixed random weights (same in every folder); the
    cache key is the test's (the run computes it from the stage's fingerprint)."""
    torch.manual_seed(0)
    network = small_network("segresnet", 4)
    ckpt = tmp_path / "source.pt"
    if not ckpt.is_file():
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.save(network.state_dict(), ckpt)
    load = config_item("validate#preprocessing", target_task="WT")
    key = key if not kw else key + "-" + "-".join(f"{k}={v}" for k, v in sorted(kw.items()))
    return RiskStage(
        "fets", cases, "multiclass", "WT", str(ckpt), network, load, SlidingWindowInferer([16, 16, 16]),
        str(tmp_path / "cache"), key, RiskMapOptions(**kw),
    )


def _map(stage: RiskStage, case_id: str) -> str:
    """The path of a case's map in a stage's cache."""
    return str(stage.cache_root / stage.key / stage.run()["cases"][case_id]["risk"])


def test_risk_stage_writes_maps_on_the_image_grid_and_caches(phantom: str, tmp_path: Path) -> None:
    cases = _scenario(phantom, tmp_path).split('target_train')
    manifest = _risk_stage(cases, tmp_path).run()
    assert set(manifest["cases"]) == {c["case_id"] for c in cases} and manifest["leep"] <= 0
    for case in TrainingCases(cases, tmp_path / "cache" / "test" / "manifest.json"):
        image, risk = nib.load(case["image"][0]), nib.load(case["risk"])
        assert risk.shape == image.shape
        np.testing.assert_allclose(risk.affine, image.affine, atol=1e-5)
    stamp = (tmp_path / "cache" / "test" / "manifest.json").stat().st_mtime_ns
    assert _risk_stage(cases, tmp_path).run() == manifest, "a complete cache folder is reused"
    assert (tmp_path / "cache" / "test" / "manifest.json").stat().st_mtime_ns == stamp
    assert all("risk" not in c for c in TrainingCases(cases, None))
    with pytest.raises(FileNotFoundError, match="risk maps not found.*run 'training'"):
        TrainingCases(cases, tmp_path / "nowhere" / "manifest.json")[0]


def test_risk_stage_statistics_and_maps_cover_the_brain_only(phantom: str, tmp_path: Path) -> None:
    """Old code: LEEP over every voxel (air included) and maps nonzero in the air."""
    cases = _scenario(phantom, tmp_path).split("target_train")
    brain = [np.asarray(nib.load(c["image"][0]).dataobj) != 0 for c in cases]
    assert not all(b.all() for b in brain), "the phantom needs air around the head for this test"
    masked_stage = _risk_stage(cases, tmp_path)
    masked, full = masked_stage.run(), _risk_stage(cases, tmp_path, mask="all").run()
    assert masked["num_voxels"] == sum(int(b.sum()) for b in brain)
    assert full["num_voxels"] == sum(b.size for b in brain) > masked["num_voxels"]
    assert masked["leep"] != full["leep"]
    for case, inside in zip(cases, brain):
        risk = np.asarray(nib.load(_map(masked_stage, case["case_id"])).dataobj)
        assert np.all(risk[~inside] == 0) and np.any(risk[inside] > 0)
    with pytest.raises(ValueError, match="unknown risk mask"):
        _risk_stage(cases, tmp_path, mask="brain")


def test_random_map_ablation_permutes_inside_the_mask_per_case(phantom: str, tmp_path: Path) -> None:
    """Old code: one permutation for every case, over the whole volume (mostly air values)."""
    cases = _scenario(phantom, tmp_path).split("target_train")
    plain = _risk_stage(cases, tmp_path)
    shuffled = _risk_stage(cases, tmp_path, shuffle=True)
    for case in cases:
        inside = np.asarray(nib.load(case["image"][0]).dataobj) != 0
        original = np.asarray(nib.load(_map(plain, case["case_id"])).dataobj)
        permuted = np.asarray(nib.load(_map(shuffled, case["case_id"])).dataobj)
        assert np.all(permuted[~inside] == 0)
        np.testing.assert_array_equal(np.sort(permuted[inside]), np.sort(original[inside]))
        assert not np.array_equal(permuted, original)
    again = _risk_stage(cases, tmp_path / "again", shuffle=True)
    for case in cases:
        np.testing.assert_array_equal(
            np.asarray(nib.load(_map(again, case["case_id"])).dataobj),
            np.asarray(nib.load(_map(shuffled, case["case_id"])).dataobj),
        )


def test_foreground_map_control_is_the_target_foreground_with_the_pooled_leep(phantom: str, tmp_path: Path) -> None:
    """The control map carries no transferability: 1 on the target task's foreground, 0 elsewhere, for every
    normalisation; its manifest keeps the pooled map's LEEP."""
    cases = _scenario(phantom, tmp_path).split("target_train")
    pooled = _risk_stage(cases, tmp_path).run()
    for normalization in ("complement", "neglog_minmax"):
        stage = _risk_stage(cases, tmp_path, map_type="foreground", normalization=normalization)
        assert stage.run()["leep"] == pytest.approx(pooled["leep"])
        for case in cases:
            label = np.asarray(nib.load(case["label"]).dataobj)
            risk = np.asarray(nib.load(_map(stage, case["case_id"])).dataobj)
            assert (label > 0).any(), f"{case['case_id']} needs tumour for this test"
            np.testing.assert_array_equal(risk, (label > 0).astype(np.float32))


def test_case_seeded_permutation_differs_between_cases_of_one_volume(tmp_path: Path) -> None:
    """Two cases with identical maps get different permutations (old code: one seed for every case)."""
    stage = _risk_stage([], tmp_path, shuffle=True)
    transferability = torch.linspace(0, 1, 512).view(1, 1, 8, 8, 8)
    mask = torch.ones_like(transferability, dtype=torch.bool)
    inside = transferability[mask]  # [512]
    first, second = stage.passes.masked_map(inside, mask, "a"), stage.passes.masked_map(inside, mask, "b")
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first, stage.passes.masked_map(inside, mask, "a"))


def test_foreground_count_travels_from_the_risk_stage_into_every_patch(phantom: str, tmp_path: Path) -> None:
    cases = _scenario(phantom, tmp_path).split("target_train")
    _risk_stage(cases, tmp_path).run()
    datalist = TrainingCases(cases, tmp_path / "cache" / "test" / "manifest.json")
    for case in datalist:
        wt = np.asarray(nib.load(case["label"]).dataobj) > 0  # WT = every tumour label
        assert case["foreground_voxels"] == int(wt.sum()) > 0
    chain = config_item("train#preprocessing", target_task="WT", patch_size=[16, 16, 16], num_samples=2)
    samples = [sample for case in datalist for sample in chain(case)]
    batch = torch.utils.data.default_collate(samples)
    _, targets = prepare_risk_batch(batch, "cpu", image_channels=1)
    expected = [c["foreground_voxels"] for c in datalist for _ in range(2)]
    assert targets.foreground_voxels.tolist() == expected


def test_inference_datalist_from_folder_and_splits(phantom: str, tmp_path: Path) -> None:
    _scenario(phantom, tmp_path).write_splits()
    cases = inference_datalist(str(tmp_path / "splits.json"))
    assert len(cases) == 2 and all(isinstance(c["image"], str) for c in cases)
    folder = Path(cases[0]["image"]).parent
    assert len(inference_datalist(str(folder))) >= 1
    with pytest.raises(FileNotFoundError):
        inference_datalist(str(tmp_path / "missing"))


def test_inference_checks_every_input_before_predicting_any(phantom: str, tmp_path: Path) -> None:
    """Old code: no input check; one prediction was written, then a bare EOFError on the truncated file."""
    import shutil

    folder = tmp_path / "inputs"
    folder.mkdir()
    for image in sorted(Path(phantom).rglob("*_flair.nii.gz"))[:3]:
        shutil.copy(image, folder / image.name)
    truncated = sorted(folder.iterdir())[1]
    truncated.write_bytes(truncated.read_bytes()[:2000])
    nan = sorted(folder.iterdir())[2]
    data = nib.load(nan)
    values = np.asarray(data.dataobj, dtype=np.float32)
    values[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(values, data.affine), nan)
    readers = ["ITKReader", "transrisk_components.bundle.io.inference.NibabelAnalyzeReader"]
    with pytest.raises(ValueError) as info:
        list(InferenceCases(str(folder), reader=readers))
    lines = str(info.value).splitlines()
    assert lines[0].startswith("2 of 3 inference inputs failed input checks (nothing was predicted")
    assert lines[1].startswith(f"  {truncated.name[:-7]}: cannot read {truncated}") and "truncated or corrupt" in lines[1]
    assert lines[2] == f"  {nan.name[:-7]}: image {nan} has 1 NaN/Inf voxels"


def test_patches_come_from_the_brain_on_cached_indices(phantom: str, tmp_path: Path) -> None:
    case = _scenario(phantom, tmp_path).split("target_train")[0]
    chain = config_item("train#preprocessing", patch_size=[16, 16, 16])
    cached = Compose(chain.transforms[: chain.get_index_of_first(lambda t: isinstance(t, Randomizable))])
    item = cached(case)  # what CacheDataset keeps: cropped to the brain, with foreground/background indices
    raw = nib.load(case["image"][0])
    assert all(c <= r for c, r in zip(item["image"].shape[1:], raw.shape)) and item["image"].shape[1:] != raw.shape
    assert type(item["image"]) is torch.Tensor, "the random transforms get plain tensors, not MetaTensors"
    image, label = item["image"].flatten(), item["label"].flatten()
    background = torch.as_tensor(item["label_bg_indices"])
    assert len(background) and bool((image[background] != 0).all()), "negatives must be drawn inside the brain"
    assert len(background) < int((label == 0).sum()), "air voxels must not be background candidates"
    assert bool((label[torch.as_tensor(item["label_fg_indices"])] > 0).all())


def test_checkpoint_interval_saves_every_n_epochs_and_the_last(tmp_path: Path) -> None:
    model = torch.nn.Linear(1, 1)
    engine = Engine(lambda engine, batch: None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ResumableCheckpoints(str(tmp_path), model, optimizer, prefix="t", interval=2).attach(engine)
    saved: list[list[str]] = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: saved.append(sorted(p.name for p in tmp_path.iterdir())))
    engine.run([0], max_epochs=3)
    assert saved[0] == [] and saved[1] == ["t_checkpoint_epoch=2.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t_checkpoint_epoch=3.pt"], "the last epoch is always kept"
    with pytest.raises(ValueError, match="interval"):
        ResumableCheckpoints(str(tmp_path), model, optimizer, prefix="t", interval=0)
