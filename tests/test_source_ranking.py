"""Ranking candidate source models by LEEP (``bundle/ranking.py``, run id ``rank_sources``), and the risk stage's
per-class transfer warning with its action (``risk#dead_classes``).

Synthetic cases, 12^3 voxels: the image encodes the label by intensity (background 1, class 1 -> 2, class 2 -> 3;
class 3 looks like background, 1), with a frame of air (0). The sources are 1x1x1 convolutions whose softmax we
control: with weight ``2 a c_z`` and bias ``-a c_z^2`` the logits are ``-a (x - c_z)^2`` up to a term shared by all
classes, so source class ``z`` fires where the intensity is ``c_z``.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import RANK_TINY, exception_messages, rank_sources_parser, run_bundle
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.inferers import SimpleInferer, SlidingWindowInferer
from monai.networks.nets import SegResNet
from monai.transforms import Compose, EnsureTyped, LoadImaged
from torch import nn

from transrisk_components.bundle.engine.source_weights import SourceWeights, output_layer, reinit_output_channels
from transrisk_components.bundle.io.risk_manifest import RiskManifest
from transrisk_components.bundle.stages.ranking import load_candidates, rank_sources, score_candidate
from transrisk_components.bundle.stages.risk import RiskStage, report_risk_classes
from transrisk_components.bundle.stages.risk_options import RiskMapOptions
from transrisk_components.bundle.engine.transforms import TaskLabelsd
from transrisk_components.data.registry import get_dataset
from transrisk_components.method.transferability import dead_classes, prior_floor_leep

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["background", "necrotic", "edema", "enhancing"]
SHAPE = (12, 12, 12)


class Pointwise(nn.Module):
    """A 1x1x1 convolution source: ``conv.weight [Cs, 1, 1, 1, 1]``, ``conv.bias [Cs]``."""

    def __init__(self, out_channels: int, centres: list[float] | None = None, sharpness: float = 20.0) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, out_channels, 1)
        if centres is not None:
            c = torch.tensor(centres, dtype=torch.float32)
            with torch.no_grad():
                self.conv.weight.copy_((2 * sharpness * c).view(-1, 1, 1, 1, 1))
                self.conv.bias.copy_(-sharpness * c**2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def factory(out_channels: int, **_: object) -> nn.Module:
    return Pointwise(out_channels)


def _label_volume(seed: int) -> np.ndarray:
    """Task classes 0..3 inside a 10^3 head: blobs of classes 1, 2 and 3."""
    rng = np.random.default_rng(seed)
    label = np.zeros(SHAPE, dtype=np.uint8)
    for cls, size in ((1, 3), (2, 4), (3, 2)):
        x, y, z = rng.integers(1, SHAPE[0] - size - 1, size=3)
        label[x : x + size, y : y + size, z : z + size] = cls
    return label


def _image_volume(label: np.ndarray) -> np.ndarray:
    image = np.choose(label, [1.0, 2.0, 3.0, 1.0]).astype(np.float32)  # class 3 looks like background
    image[[0, -1], :, :] = image[:, [0, -1], :] = image[:, :, [0, -1]] = 0.0  # air
    return image


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Three target cases as NIfTI files (raw FeTS labels 0, 1, 2, 4)."""
    root = tmp_path_factory.mktemp("cases")
    raw = np.array([0, 1, 2, 4], dtype=np.uint8)
    out = []
    for i in range(3):
        label = _label_volume(i)
        label[[0, -1], :, :] = label[:, [0, -1], :] = label[:, :, [0, -1]] = 0
        for name, data in (("img", _image_volume(label)), ("seg", raw[label])):
            nib.save(nib.Nifti1Image(data, np.eye(4)), root / f"case{i}_{name}.nii.gz")
        out.append({"case_id": f"case{i}", "image": [str(root / f"case{i}_img.nii.gz")], "label": str(root / f"case{i}_seg.nii.gz")})
    return out


def load_transform() -> Compose:
    """Whole-volume loading without intensity normalisation (the sources read raw intensities)."""
    return Compose([
        LoadImaged(["image", "label"], reader="NibabelReader", image_only=True, ensure_channel_first=True),
        TaskLabelsd("label", dataset="fets", task="multiclass"),
        EnsureTyped("image", dtype=torch.float32),
    ])


def save(network: nn.Module, path: Path) -> Path:
    torch.save(network.state_dict(), path)
    return path


def rank(candidates: list[dict], cases: list[dict], out: Path | None = None) -> list[dict]:
    return rank_sources(candidates, cases, load_transform(), SimpleInferer(), CLASSES, out, network_factory=factory)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ckpts")
    return {
        "oracle": save(Pointwise(4, [1.0, 2.0, 3.0, 10.0]), folder / "oracle.pt"),  # sees all but enhancing
        "binary": save(Pointwise(2, [1.0, 2.5], sharpness=4.0), folder / "binary.pt"),  # tumour or not
        "constant": save(Pointwise(3, [0.0, 0.0, 0.0]), folder / "constant.pt"),  # the same softmax everywhere
    }


def test_constant_source_scores_the_prior_floor(cases: list[dict], checkpoints: dict[str, Path]) -> None:
    (row,) = rank([{"name": "constant", "ckpt": str(checkpoints["constant"])}], cases)
    assert row["leep"] == pytest.approx(row["leep_floor"], abs=1e-6)
    assert row["leep_gain_over_floor"] == pytest.approx(0.0, abs=1e-6)
    prior = torch.tensor([row["classes"][c]["prior"] for c in CLASSES], dtype=torch.float64)
    assert row["leep_floor"] == pytest.approx(prior_floor_leep(prior))
    for name in CLASSES:
        assert row["classes"][name]["transferability"] == pytest.approx(row["classes"][name]["prior"], abs=1e-6)
    assert row["dead_classes"] == CLASSES[1:]  # every foreground class; background is never reported


def test_the_targets_own_model_ranks_first_and_order_does_not_matter(
    cases: list[dict], checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    own = save(Pointwise(4, [1.0, 2.0, 3.0, 1.0]), tmp_path / "own.pt")  # cannot tell 3 from 0 either, but is the target's
    entries = [{"name": n, "ckpt": str(p)} for n, p in checkpoints.items()] + [{"name": "own", "ckpt": str(own)}]
    ranked = rank(entries, cases, tmp_path / "out")
    names = [r["name"] for r in ranked]
    assert names[0] in ("oracle", "own") and names[-1] == "constant" and names.index("binary") == 2
    assert [r["rank"] for r in ranked] == [1, 2, 3, 4]
    assert all(a["leep"] >= b["leep"] for a, b in zip(ranked, ranked[1:]))
    assert [r["name"] for r in rank(entries[::-1], cases)] == names, "the ranking depends on the listing order"
    with open(tmp_path / "out" / "source_ranking.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == names
    assert {"T_enhancing", "floor_enhancing", "leep_floor", "leep_gain_over_floor", "dead_classes"} <= set(rows[0])
    assert "enhancing" in rows[0]["dead_classes"].split("|")
    assert (tmp_path / "out" / "source_ranking.png").stat().st_size > 1000


def test_the_ranking_ignores_the_order_of_source_classes(cases: list[dict], tmp_path: Path) -> None:
    oracle = Pointwise(4, [1.0, 2.0, 3.0, 10.0], sharpness=2.0)
    state = oracle.state_dict()
    order = torch.tensor([2, 0, 3, 1])
    permuted = save_state({k: v[order] for k, v in state.items()}, tmp_path / "permuted.pt")
    binary = save(Pointwise(2, [1.0, 2.5], sharpness=4.0), tmp_path / "binary.pt")
    binary_flipped = save_state({k: v.flip(0) for k, v in torch.load(binary).items()}, tmp_path / "binary_flipped.pt")
    a = rank([{"name": "oracle", "ckpt": str(save(oracle, tmp_path / "o.pt"))}, {"name": "binary", "ckpt": str(binary)}], cases)
    b = rank([{"name": "oracle", "ckpt": str(permuted)}, {"name": "binary", "ckpt": str(binary_flipped)}], cases)
    assert [r["name"] for r in a] == [r["name"] for r in b]
    for x, y in zip(a, b):
        assert x["leep"] == pytest.approx(y["leep"], abs=1e-6)  # float32 softmax: sums in another order
        for name in CLASSES:
            assert x["classes"][name]["transferability"] == pytest.approx(y["classes"][name]["transferability"], abs=1e-6)


def save_state(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


def test_bad_candidate_files_are_named_before_any_inference(
    cases: list[dict], checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transrisk_components.bundle.stages.ranking as ranking

    def no_inference(*args, **kwargs):
        raise AssertionError("inference ran before every candidate was checked")

    monkeypatch.setattr(ranking, "score_candidate", no_inference)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(300))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoints["oracle"].read_bytes()[:200])
    good = {"name": "oracle", "ckpt": str(checkpoints["oracle"])}
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        rank([good, {"name": "gone", "ckpt": str(tmp_path / "missing.pt")}], cases)
    with pytest.raises(ValueError) as error:
        rank([good, {"name": "noise", "ckpt": str(garbage)}, {"name": "cut", "ckpt": str(truncated)}], cases)
    message = str(error.value)
    assert "garbage.pt cannot be read" in message and "truncated.pt cannot be read" in message
    with pytest.raises(ValueError, match=r"oracle.pt has 4 output classes.*says num_classes 3"):
        rank([{**good, "num_classes": 3}], cases)
    fixed = {"name": "fixed", "ckpt": str(checkpoints["oracle"]),
             "network_def": {"_target_": "SegResNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 4, "init_filters": 4,
                             "norm": ["GROUP", {"num_groups": 4}]}}
    with pytest.raises(ValueError, match=r"oracle.pt does not fit its network SegResNet with out_channels=4"):
        rank([fixed], cases)
    with pytest.raises(ValueError, match="unique"):
        rank([good, good], cases)
    listed = tmp_path / "candidates.json"
    listed.write_text("[{'name': ")
    with pytest.raises(ValueError, match="candidates.json is not JSON"):
        load_candidates(candidates_file=listed, network_factory=factory)


def test_candidates_file_reads_paths_relative_to_itself(checkpoints: dict[str, Path]) -> None:
    listed = checkpoints["oracle"].parent / "candidates.json"
    listed.write_text(json.dumps({"candidates": [{"name": "o", "ckpt": "oracle.pt", "modality": "t1"}]}))
    (candidate,) = load_candidates(candidates_file=listed, network_factory=factory)
    assert candidate.num_classes == 4 and candidate.ckpt == checkpoints["oracle"] and candidate.modality == "t1"


# --- the risk stage's per-class warning and its action ------------------------------------------------------------


def _manifest(cases: list[dict], ckpt: Path, tmp_path: Path) -> Path:
    """The risk stage's manifest of ``cases`` under the source ``ckpt`` (computed once per checkpoint)."""
    stage = RiskStage("fets", cases, "multiclass", "multiclass", str(ckpt), Pointwise(4), load_transform(),
                      SlidingWindowInferer([12, 12, 12]), str(tmp_path / "cache"), ckpt.stem, RiskMapOptions())
    stage.run()
    return tmp_path / "cache" / ckpt.stem / "manifest.json"


def test_a_dead_class_is_warned_about_and_summarised(
    cases: list[dict], checkpoints: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = json.loads(_manifest(cases, checkpoints["oracle"], tmp_path).read_text())
    summary_path = tmp_path / "risk_stage_summary.json"
    with caplog.at_level(logging.INFO):
        dead = report_risk_classes(manifest, 0.05, "warn", "nonzero", summary_path, checkpoints["oracle"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert dead == ["enhancing"] and len(warnings) == 1 and "no information about class enhancing" in warnings[0]
    assert "--risk#dead_classes reinit" in warnings[0] and "prior floor" in warnings[0]
    summary = json.loads(summary_path.read_text())
    assert summary["dead_classes"] == ["enhancing"] and summary["dead_class_action"] == "warn"
    enhancing = summary["classes"]["enhancing"]
    assert enhancing["information"] < 0.05 and enhancing["transferability"] >= enhancing["prior"]
    assert summary["classes"]["edema"]["information"] > 0.5
    read = RiskManifest(_manifest(cases, checkpoints["oracle"], tmp_path))
    assert read.dead_class_indices(0.05) == [3] and read.foreground_transfers(0.05)
    assert read.dead_class_names(0.0) == []


def test_reinit_changes_exactly_the_dead_output_channels(
    cases: list[dict], checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    manifest = _manifest(cases, checkpoints["oracle"], tmp_path)
    target = Pointwise(4)
    torch.manual_seed(1)
    SourceWeights(target, "source", checkpoints["oracle"], 4, 4, dead_classes="reinit", risk_manifest=manifest)(Engine(lambda e, b: None))
    source = torch.load(checkpoints["oracle"])
    for key in ("conv.weight", "conv.bias"):
        assert torch.equal(target.state_dict()[key][:3], source[key][:3])
        assert not torch.equal(target.state_dict()[key][3], source[key][3])
    plain = Pointwise(4)
    SourceWeights(plain, "source", checkpoints["oracle"], 4, 4, dead_classes="warn")(Engine(lambda e, b: None))
    assert all(torch.equal(v, source[k]) for k, v in plain.state_dict().items())
    with pytest.raises(ValueError, match="dead_classes"):
        SourceWeights(plain, "source", checkpoints["oracle"], 4, 4, dead_classes="drop")


def test_reinit_touches_only_the_output_layer_of_a_segresnet() -> None:
    net = SegResNet(spatial_dims=3, in_channels=1, out_channels=4, init_filters=4, blocks_down=(1, 2), blocks_up=(1,),
                    norm=("GROUP", {"num_groups": 4}))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    name, _ = output_layer(net, 4)
    reinit_output_channels(net, [1, 3], 4)
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"{name}.weight", f"{name}.bias"}
    for key in changed:
        assert torch.equal(net.state_dict()[key][[0, 2]], before[key][[0, 2]])
        assert not torch.equal(net.state_dict()[key][[1, 3]], before[key][[1, 3]])


def test_scratch_starts_from_random_weights_when_no_foreground_class_transfers(
    cases: list[dict], checkpoints: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    constant = save(Pointwise(4, [0.0, 0.0, 0.0, 0.0]), tmp_path / "constant4.pt")
    manifest = _manifest(cases, constant, tmp_path)
    assert not RiskManifest(manifest).foreground_transfers(0.05)
    target = Pointwise(4)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with caplog.at_level(logging.WARNING):
        SourceWeights(target, "source", constant, 4, 4, dead_classes="scratch", risk_manifest=manifest)(Engine(lambda e, b: None))
    assert "random initialisation" in caplog.text
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())
    informed = _manifest(cases, checkpoints["oracle"], tmp_path)
    SourceWeights(target, "source", checkpoints["oracle"], 4, 4, dead_classes="scratch", risk_manifest=informed)(Engine(lambda e, b: None))
    assert torch.equal(target.conv.weight, torch.load(checkpoints["oracle"])["conv.weight"])


def test_dead_classes_method_ignores_absent_classes() -> None:
    t = torch.tensor([0.9, 0.02, float("nan"), 0.5], dtype=torch.float64)
    p = torch.tensor([0.8, 0.0199, 0.0, 0.1801], dtype=torch.float64)
    assert dead_classes(t, p, 0.05) == [1]
    # background at its floor is not reported; a foreground class at its floor is
    assert dead_classes(torch.tensor([0.8, 0.2], dtype=torch.float64), torch.tensor([0.8, 0.2], dtype=torch.float64)) == [1]


@pytest.mark.parametrize("bundle", ["fets", "iseg"])
def test_dead_class_action_is_what_the_fine_tuning_trainer_reads(bundle: str) -> None:
    """The action and margin reach the fine-tuning stage's handler (so they are in its fingerprint), default warn."""
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.json"))
    [weights] = [h for h in parser["train"]["handlers"] if h["_target_"].endswith("SourceWeights")]
    assert weights["dead_classes"] == "@risk#dead_classes" and weights["dead_class_margin"] == "@risk#dead_class_margin"
    assert parser["risk"]["dead_classes"] == "warn"


# --- the run id, end to end on a tiny phantom -------------------------------------------------------------------


@pytest.mark.parametrize("bundle", ["fets", "iseg"])
def test_rank_sources_run_id_writes_the_csv_and_png(
    bundle: str, tmp_path: Path, data_fets_phantom: Path, data_iseg_phantom: Path
) -> None:
    configs = REPO / "bundles" / bundle / "configs"
    phantom = str(data_fets_phantom if bundle == "fets" else data_iseg_phantom)
    tiny = RANK_TINY
    # the bundle's own source (never trained here: random weights of the tiny network) ...
    parser = rank_sources_parser(configs, tmp_path, phantom)
    torch.manual_seed(0)
    (tmp_path / "models").mkdir()
    save(parser.get_parsed_content("rank#network_def")(out_channels=4), tmp_path / "models" / "source.pt")
    modalities = get_dataset(bundle).modalities
    with pytest.raises(RuntimeError) as error:  # a missing default checkpoint names the file and the way on
        run_bundle(configs, "rank_sources", tmp_path, phantom, tiny, ("train.json", "rank_sources.json"),
                   source_ckpt=str(tmp_path / "models" / "none.pt"))
    assert "none.pt does not exist" in exception_messages(error.value)
    run_bundle(configs, "rank_sources", tmp_path, phantom, tiny, ("train.json", "rank_sources.json"))
    with open(tmp_path / "eval" / "source_ranking.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["rank"] == "1" and row["name"].startswith("source_") and float(row["leep"]) <= 0
    # ... and a candidates file: the same model shown another modality, and a two-class source
    save(parser.get_parsed_content("rank#network_def")(out_channels=2), tmp_path / "models" / "binary.pt")
    listed = tmp_path / "candidates.json"
    listed.write_text(json.dumps([
        {"name": "own", "ckpt": "models/source.pt"},
        {"name": "other_modality", "ckpt": "models/source.pt", "input_modality": modalities[0]},
        {"name": "binary", "ckpt": "models/binary.pt", "network": {"init_filters": 4}},
    ]))
    run_bundle(configs, "rank_sources", tmp_path, phantom, tiny, ("train.json", "rank_sources.json"),
               candidates_file=str(listed))
    with open(tmp_path / "eval" / "source_ranking.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["name"] for r in rows) == ["binary", "other_modality", "own"]
    assert [r["rank"] for r in rows] == ["1", "2", "3"]
    assert [float(r["leep"]) for r in rows] == sorted((float(r["leep"]) for r in rows), reverse=True)
    assert {r["input_modality"] for r in rows} >= {modalities[0]}
    assert (tmp_path / "eval" / "source_ranking.png").stat().st_size > 1000


def test_dead_class_action_runs_in_the_bundle(tmp_path: Path, data_fets_phantom: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``--risk#dead_classes reinit`` on the tiny FeTS bundle: the risk stage's summary names the action, and the
    fine-tuning log says what was done (a 1-epoch source may leave any set of classes dead, even none)."""
    configs = REPO / "bundles" / "fets" / "configs"
    tiny = {"network_def#init_filters": 4, "network_def#blocks_down": [1, 2], "network_def#blocks_up": [1],
            "patch_size": [16, 16, 16], "batch_size": 1, "source_epochs": 1, "max_epochs": 1, "val_interval": 1,
            "num_source": 2, "num_target_train": 2, "num_target_val": 1, "num_target_test": 1, "progress": False,
            "safe#enabled": False}
    with caplog.at_level(logging.INFO):
        run_bundle(configs, "training", tmp_path, str(data_fets_phantom), tiny, **{"risk#dead_classes": "reinit"})
    summary = json.loads((tmp_path / "eval" / "risk_stage_summary.json").read_text())
    assert summary["dead_class_action"] == "reinit" and set(summary["classes"]) == set(CLASSES)
    assert "risk#dead_classes reinit" in caplog.text
    recorded = json.loads((tmp_path / "models" / "finetune.fingerprint.json").read_text())
    assert recorded["config"]["risk#dead_classes"] == "reinit"
    assert recorded["upstream"]["risk"] == summary["cache"], "the maps that tell the dead classes are what it builds on"


class TwoLayer(nn.Module):
    """``features = conv1(x)`` (``[B, 1, *S]`` with weight ``w``, bias 1), then a 1x1x1 output layer to 4 classes."""

    def __init__(self, w: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(1, 1, 1)
        self.out = nn.Conv3d(1, 4, 1)
        with torch.no_grad():
            self.conv1.weight.fill_(w)
            self.conv1.bias.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.conv1(x))


def test_gbc_prefers_penultimate_features_that_separate_the_target_classes(cases: list[dict]) -> None:
    """Features equal to the image tell classes 1 and 2 apart from the rest and 3 not from background (GBC -2: one
    coefficient of 1 in each direction); constant features tell nothing (GBC -12: every ordered pair of 4 classes)."""
    separating, constant = TwoLayer(1.0), TwoLayer(0.0)
    scores = {}
    for name, network in (("separating", separating), ("constant", constant)):
        result = score_candidate(network, 4, cases, load_transform(), SimpleInferer(), CLASSES, gbc_voxels_per_class=50)
        scores[name] = result["gbc"]
        assert not network.out._forward_hooks, "the feature hook is taken off again"
    assert scores["separating"] == pytest.approx(-2.0, abs=1e-3)
    assert scores["constant"] == pytest.approx(-12.0, abs=1e-6)
    row = rank([{"name": "pointwise", "ckpt": str(save(Pointwise(4), Path(cases[0]["label"]).parent / "pw.pt"))}], cases)[0]
    assert -12.0 <= row["gbc"] <= 0.0, "a 1x1x1 network's features are its input image"
