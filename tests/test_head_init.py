"""``head_init leep``: the target head starts from the source head through the LEEP table ``P(z | y)``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bundle_helpers import TINY, run_bundle
from ignite.engine import Engine, Events
from torch import nn

from transrisk_components.bundle.engine.source_weights import SourceWeights, output_layer
from transrisk_components.bundle.workflow.fingerprint import differences
from transrisk_components.bundle.workflow.pipeline import TransferPipeline
from transrisk_components.bundle.workflow.request import BundleRequest
from transrisk_components.bundle.workflow.settings import SettingsError
from transrisk_components.bundle.engine.source_model import leep_output_layer, read_source_state
from transrisk_components.method.head_init import leep_head

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "fets" / "configs"


# --- the method function -------------------------------------------------------------------------------------------


def test_a_one_to_one_mapping_copies_the_source_units_permuted() -> None:
    """Each target class seen as exactly one source class (and back): ``P(z | y)`` is a permutation, the rule copies."""
    torch.manual_seed(0)
    weight, bias = torch.randn(3, 5, 2, 2, 2), torch.randn(3)  # a 3-class convolution head
    order = [2, 0, 1]  # target class y is source class order[y]
    joint = torch.zeros(3, 3, dtype=torch.float64)
    for y, z in enumerate(order):
        joint[y, z] = [0.5, 0.3, 0.2][y]
    new_weight, new_bias = leep_head(weight, bias, joint)
    assert torch.equal(new_weight, weight[order]) and torch.equal(new_bias, bias[order])
    assert new_weight.dtype == weight.dtype


def test_a_hand_computed_two_by_three_table() -> None:
    """2 target x 3 source classes: ``P(z | y=0) = (0.2, 0.6, 0.2)``, ``P(z | y=1) = (0, 0.25, 0.75)``."""
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])  # [Cs=3, C_in=2], a linear head
    bias = torch.tensor([1.0, -1.0, 0.5])
    joint = torch.tensor([[0.1, 0.3, 0.1], [0.0, 0.125, 0.375]])  # P(y, z), sums to 1
    new_weight, new_bias = leep_head(weight, bias, joint)
    # y=0: 0.2 * (1, 0) + 0.6 * (0, 1) + 0.2 * (2, 2) = (0.6, 1.0); b = 0.2 - 0.6 + 0.1 = -0.3
    # y=1: 0.25 * (0, 1) + 0.75 * (2, 2) = (1.5, 1.75); b = -0.25 + 0.375 = 0.125
    torch.testing.assert_close(new_weight, torch.tensor([[0.6, 1.0], [1.5, 1.75]]))
    torch.testing.assert_close(new_bias, torch.tensor([-0.3, 0.125]))
    # counts instead of probabilities: the same rows
    torch.testing.assert_close(leep_head(weight, bias, joint * 800)[0], new_weight)


def test_a_target_class_absent_from_the_statistics_starts_at_the_source_marginal() -> None:
    weight, bias = torch.eye(2), torch.tensor([1.0, 3.0])
    joint = torch.tensor([[0.25, 0.75], [0.0, 0.0]])
    new_weight, new_bias = leep_head(weight, None, joint)
    torch.testing.assert_close(new_weight[1], torch.tensor([0.25, 0.75]))
    assert new_bias is None
    assert leep_head(weight, bias, joint)[1][1].item() == pytest.approx(2.5)


def test_the_method_refuses_tables_that_do_not_fit() -> None:
    weight, bias = torch.randn(3, 4), torch.randn(3)
    with pytest.raises(ValueError, match=r"\[Ct, Cs\] with Cs = 3"):
        leep_head(weight, bias, torch.ones(2, 4))
    with pytest.raises(ValueError, match="non-negative"):
        leep_head(weight, bias, torch.tensor([[1.0, -1.0, 0.5]]))
    with pytest.raises(ValueError, match="not all zero"):
        leep_head(weight, bias, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="bias must be"):
        leep_head(weight, torch.randn(4), torch.ones(2, 3))


# --- the bundle side: the output layer of a network -----------------------------------------------------------------


@pytest.mark.parametrize("layer_type", [nn.Conv3d, nn.ConvTranspose3d])
def test_the_output_layer_is_set_along_its_output_dimension(layer_type: type) -> None:
    """A transposed convolution holds its output units in dimension 1: they are mixed there."""
    torch.manual_seed(1)
    source, target = layer_type(4, 3, 1), layer_type(4, 2, 1)
    joint = torch.tensor([[0.0, 0.5, 0.0], [0.3, 0.0, 0.2]], dtype=torch.float64)
    state = {f"head.{k}": v for k, v in source.state_dict().items()}
    leep_output_layer(target, "head", state, joint, "source.pt")
    out_dim = 1 if layer_type is nn.ConvTranspose3d else 0
    units = source.weight.detach().movedim(out_dim, 0)
    torch.testing.assert_close(target.weight.detach().movedim(out_dim, 0)[0], units[1])
    torch.testing.assert_close(target.weight.detach().movedim(out_dim, 0)[1], 0.6 * units[0] + 0.4 * units[2])
    torch.testing.assert_close(target.bias.detach(), torch.stack([source.bias[1], 0.6 * source.bias[0] + 0.4 * source.bias[2]]).detach())
    with pytest.raises(ValueError, match=r"3 units in source.pt and 2 in the target network, but the risk stage's P\(y, z\) is 2 target x 4"):
        leep_output_layer(target, "head", state, torch.ones(2, 4), "source.pt")


def test_head_init_leep_refuses_a_sigmoid_source_and_a_missing_risk_stage_naming_the_option() -> None:
    network = nn.Conv3d(1, 2, 1)
    with pytest.raises(ValueError, match=r"head_init 'leep' needs a softmax source, but source_output is 'sigmoid'.*2\^k"):
        SourceWeights(network, "source", "source.pt", 3, 2, risk_manifest="manifest.json", head_init="leep", source_output="sigmoid")
    with pytest.raises(ValueError, match="head_init 'leep' needs the risk stage"):
        SourceWeights(network, "source", "source.pt", 3, 2, head_init="leep")
    with pytest.raises(ValueError, match=r"unknown head_init 'copy'; choose one of \('random', 'leep'\)"):
        SourceWeights(network, "source", "source.pt", 3, 2, head_init="copy")


# --- the bundles ----------------------------------------------------------------------------------------------------


def _plan(bundle: str, tmp_path: Path, dataset_dir: Path, **overrides: object):
    """The plan of a fine-tuning run of ``bundle`` (fingerprints only; nothing runs or is written)."""
    request = BundleRequest.create(REPO / "bundles" / bundle / "configs" / "train.json",
                                   {**TINY, "bundle_root": str(tmp_path), "dataset_dir": str(dataset_dir), **overrides})
    return TransferPipeline(request, "finetune").plan(check_outputs=False)


@pytest.mark.parametrize("bundle", ["fets", "iseg"])
def test_foreign_source_head_init_leep_needs_the_risk_statistics_and_enters_the_fingerprint(
    bundle: str, tmp_path: Path, data_fets_phantom: Path, data_iseg_phantom: Path
) -> None:
    """``head_init leep`` makes the risk stage run with the map off and changes the fine-tuning fingerprint, naming
    the risk maps it read; from random weights (the scratch candidate) it reads no maps; a sigmoid source is refused
    before anything runs."""
    data = data_fets_phantom if bundle == "fets" else data_iseg_phantom
    plain = {"risk#enabled": False}
    default = _plan(bundle, tmp_path, data, **plain)
    assert not default.risks and default.candidates[0].risk_key is None
    leep = _plan(bundle, tmp_path, data, **plain, head_init="leep")
    assert list(leep.risks) == [leep.candidates[0].risk_key]
    found = differences(default.candidates[0].finetune.fingerprint, leep.candidates[0].finetune.fingerprint)
    assert "config.head_init: random -> leep" in found
    assert f"upstream.risk: <absent> -> {leep.candidates[0].risk_key}" in found
    assert not _plan(bundle, tmp_path, data, **plain, head_init="leep", target_init="random").risks
    with pytest.raises(SettingsError, match="head_init 'leep': needs a softmax source"):
        _plan(bundle, tmp_path, data, **plain, head_init="leep", source_output="sigmoid")


def test_foreign_source_head_init_leep_starts_the_fine_tuned_head_at_the_formula(
    tmp_path: Path, data_fets_phantom: Path
) -> None:
    """A 4-class source (multiclass) fine-tuned on the binary WT task with ``--head_init leep`` and the risk map off:
    the target network's head at the start of fine-tuning is ``W'_y = sum_z P(z | y) W_z`` with ``P(y, z)`` from
    the risk stage's manifest, and the fingerprint records the option."""
    overrides = {"target_task": "WT", "head_init": "leep", "risk#enabled": False}
    run_bundle(CONFIGS, "risk_map", tmp_path, str(data_fets_phantom), TINY, **overrides)
    candidate = _plan("fets", tmp_path, data_fets_phantom, **overrides).candidates[0]
    workflow = candidate.finetune.config.workflow()
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    network = workflow.parser.get_parsed_content("network_def")
    started: dict[str, torch.Tensor] = {}

    def record(engine: Engine) -> None:  # registered after SourceWeights: sees the weights it set
        name, layer = output_layer(network, 2)
        started.update(name=name, weight=layer.weight.detach().clone(), bias=layer.bias.detach().clone())
        engine.terminate()

    trainer.add_event_handler(Events.STARTED, record)
    trainer.run()

    manifest = json.loads((tmp_path / "outputs" / "risk_maps" / candidate.risk_key / "manifest.json").read_text())
    joint = torch.tensor(manifest["joint"], dtype=torch.float64)  # [Ct=2, Cs=4]
    assert joint.shape == (2, 4) and joint.sum().item() == pytest.approx(1.0)
    state = read_source_state(tmp_path / "models" / "source.pt")
    source_weight, source_bias = state[f"{started['name']}.weight"], state[f"{started['name']}.bias"]  # [4, ...], [4]
    given_y = joint / joint.sum(dim=1, keepdim=True)  # P(z | y), both target classes present
    expected_weight = torch.einsum("yz,z...->y...", given_y, source_weight.double()).float()
    expected_bias = (given_y @ source_bias.double()).float()
    torch.testing.assert_close(started["weight"].cpu(), expected_weight)
    torch.testing.assert_close(started["bias"].cpu(), expected_bias)
    assert candidate.finetune.fingerprint["config"]["head_init"] == "leep"
    assert all("risk" not in case for case in workflow.parser.get_parsed_content("train#datalist"))
