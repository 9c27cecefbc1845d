"""Ensembles of the candidates (``safe#ensembles``): one network that averages the members' softmax, written as one
checkpoint that ``evaluating``, ``inferring`` and ``ckpt_export`` build and load; scored by the same rule beside the
candidates; wrong settings stop before any stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bundle_helpers import TINY, exception_messages, run_bundle, validation_dice
from monai.bundle import ConfigParser, ckpt_export
from monai.networks.nets import SegResNet

from transrisk_components.bundle.engine.ensemble import (
    SoftmaxEnsemble,
    checkpoint_members,
    network_for_checkpoint,
    write_ensemble_checkpoint,
)
from transrisk_components.bundle.workflow.ensembles import ensemble_candidates
from transrisk_components.bundle.workflow.selection import choose_candidate

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "fets" / "configs"
SETTINGS = {**TINY, "safe#enabled": True, "safe#ensembles": True, "num_target_val": 2}


def _net(filters: int = 4) -> SegResNet:
    return SegResNet(spatial_dims=3, in_channels=1, out_channels=4, init_filters=filters, blocks_down=[1, 2], blocks_up=[1],
                     norm=("GROUP", {"num_groups": filters}))


def test_the_ensemble_gives_the_members_mean_softmax_and_scripts() -> None:
    torch.manual_seed(0)
    members = [_net().eval(), _net().eval()]
    ensemble = SoftmaxEnsemble(members).eval()
    image = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        expected = torch.stack([torch.softmax(m(image), dim=1) for m in members]).mean(0)
        torch.testing.assert_close(torch.softmax(ensemble(image), dim=1), expected, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(torch.jit.script(ensemble)(image), ensemble(image))


def test_an_ensemble_checkpoint_builds_and_loads_the_ensemble(tmp_path: Path) -> None:
    torch.manual_seed(0)
    files = []
    for index in range(3):
        files.append(tmp_path / f"member{index}.pt")
        torch.save(_net().state_dict(), files[-1])
    write_ensemble_checkpoint(files, tmp_path / "model.pt")
    assert checkpoint_members(tmp_path / "model.pt") == 3 and checkpoint_members(files[0]) == 1
    network = network_for_checkpoint(_net(), tmp_path / "model.pt")
    assert isinstance(network, SoftmaxEnsemble) and len(network.members) == 3
    network.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))  # strict: every key matches
    torch.testing.assert_close(network.members[2].state_dict(), torch.load(files[2], weights_only=True))
    assert not isinstance(network_for_checkpoint(_net(), files[0]), SoftmaxEnsemble)
    torch.save(_net(filters=8).state_dict(), tmp_path / "wider.pt")
    with pytest.raises(ValueError, match="wider.pt"):
        write_ensemble_checkpoint([files[0], tmp_path / "wider.pt"], tmp_path / "bad.pt")


def test_the_ensembles_are_the_best_two_and_all() -> None:
    def cases(value: float) -> dict:
        return {f"c{i}": {"ET": value} for i in range(5)}

    three = choose_candidate({"risk_map": cases(0.4), "plain": cases(0.6), "scratch": cases(0.5)})
    assert ensemble_candidates(three) == {"ensemble_top2": ("plain", "scratch"), "ensemble_all": ("plain", "scratch", "risk_map")}
    assert ensemble_candidates(choose_candidate({"a": cases(0.4), "b": cases(0.6)})) == {"ensemble_all": ("b", "a")}
    assert ensemble_candidates(choose_candidate({"a": cases(0.4)})) == {}


@pytest.mark.parametrize(("overrides", "named"), [
    ({"safe#folds": 2}, "k-fold choice does not score ensembles yet"),
    ({"safe#candidates": {"plain": {"risk#enabled": False}, "ensemble_x": {}}}, "begin with 'ensemble_'"),
])
def test_wrong_ensemble_settings_stop_before_any_stage(tmp_path: Path, fets_phantom: str, overrides: dict, named: str) -> None:
    with pytest.raises(Exception) as error:
        run_bundle(CONFIGS, "training", tmp_path, fets_phantom, SETTINGS, **overrides)
    assert named in exception_messages(error.value)
    assert not (tmp_path / "models").exists()


def test_safe_transfer_scores_the_ensembles_and_evaluating_and_export_load_one(tmp_path: Path, fets_phantom: str) -> None:
    run_bundle(CONFIGS, "training", tmp_path, fets_phantom, SETTINGS)
    report = json.loads((tmp_path / "eval" / "transfer_report.json").read_text())
    singles = ["risk_map", "plain", "scratch"]
    assert list(report["candidates"]) == [*singles, "ensemble_top2", "ensemble_all"], "ensembles after the candidates"
    assert sorted(report["candidates"]["ensemble_all"]["members"]) == sorted(singles)
    assert report["candidates"]["ensemble_top2"]["inference_cost"] == 2
    validation = {name: validation_dice(tmp_path / "eval" / "candidates" / name / "validation" / "metrics_per_case.csv")
                  for name in report["candidates"]}
    assert report["chosen"] == choose_candidate(validation).chosen
    installed = tmp_path / "models" / "model.pt"
    assert checkpoint_members(installed) == len(report["candidates"][report["chosen"]].get("members", [None]))

    ensemble = tmp_path / "models" / "candidates" / "ensemble_all" / "model.pt"
    network = {k: v for k, v in TINY.items() if k.startswith("network_def#")}
    run_bundle(CONFIGS, "evaluating", tmp_path, fets_phantom, TINY, configs=("train.json", "evaluate.json"),
               model_file=str(ensemble), output_dir=str(tmp_path / "ensemble_eval"))
    summary = json.loads((tmp_path / "ensemble_eval" / "metrics_summary.json").read_text())
    assert summary["model"]["sha256"]
    exported = tmp_path / "ensemble.ts"
    ckpt_export(net_id="network", filepath=str(exported), ckpt_file=str(ensemble), meta_file=str(CONFIGS / "metadata.json"),
                config_file=str(CONFIGS / "inference.json"), key_in_ckpt="", bundle_root=str(tmp_path),
                model_file=str(ensemble), **network)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({**network, "model_file": str(ensemble), "bundle_root": str(tmp_path)})
    eager = parser.get_parsed_content("network")
    eager.load_state_dict(torch.load(ensemble, weights_only=True))
    image = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(exported))(image), eager.eval()(image), atol=1e-5, rtol=1e-5)
