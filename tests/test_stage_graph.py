"""The stage graph (issue #32): settings checked before the first stage, fingerprints from the resolved config,
a refused run that changes nothing, and the ``--overwrite`` sequence a new user met.

Runs the FeTS bundle on a tiny phantom (``TINY`` in ``bundle_helpers.py``), each test under its own bundle folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from bundle_helpers import TINY, exception_messages, run_bundle
from test_bundle_fets import CONFIGS

from transrisk_components.bundle.io.records import StaleOutputError
from transrisk_components.bundle.workflow.errors import real_cause
from transrisk_components.bundle.workflow.fingerprint import differences
from transrisk_components.bundle.workflow.pipeline import TransferPipeline
from transrisk_components.bundle.workflow.request import BundleRequest
from transrisk_components.bundle.workflow.settings import SettingsError

SAFE = {**TINY, "safe#enabled": True, "num_target_val": 2}


def folder_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by relative path -> SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(configs_dir: Path, root: Path, fets_phantom: str, settings: dict, **overrides: object) -> BaseException:
    with pytest.raises(Exception) as error:
        run_bundle(configs_dir, "training", root, fets_phantom, settings, **overrides)
    return real_cause(error.value)


@pytest.mark.parametrize(("overrides", "named"), [
    ({"max_epochs": -1}, "max_epochs -1: must be an integer >= 1"),
    ({"val_interval": 0}, "val_interval 0: must be an integer >= 1"),
    ({"source_epochs": 0}, "source_epochs 0: must be an integer >= 1"),
    ({"val_interval": 5}, "val_interval 5: must be at most max_epochs (1)"),
    ({"risk#scheme": "quadratic"}, "risk#scheme 'quadratic': must be one of"),
    ({"safe#workers": 2.5}, "safe#workers 2.5: must be \"auto\" or an integer >= 1"),
    ({"safe#candidates": {"risk_map": {}, "typo": {"risk#strenght": 2.0}}}, "candidate 'typo': risk#strenght is not an id"),
    ({"safe#candidates": {"risk_map": {}, "bad": {"max_epochs": 0}}}, "safe transfer candidate 'bad': max_epochs 0"),
    ({"safe#worker": 2}, "safe#worker is not an id of the bundle's configs; did you mean safe#workers"),
    ({"risk#normalization": "minmax"}, "risk#normalization is not an id any more: use risk#map_normalization"),
])
def test_a_bad_setting_stops_the_run_before_any_stage_naming_the_id(
    tmp_path: Path, fets_phantom: str, overrides: dict, named: str
) -> None:
    cause = refused(CONFIGS, tmp_path, fets_phantom, SAFE, **overrides)
    assert isinstance(cause, SettingsError) and named in str(cause), str(cause)
    assert not (tmp_path / "models").exists() and not (tmp_path / "eval").exists(), "nothing ran, nothing was written"


def test_editing_one_transform_parameter_refits_the_fine_tuning_and_reuses_the_source(tmp_path: Path, fets_phantom: str) -> None:
    """A user halves the ``prob`` of the first ``RandFlipd`` in a copy of the bundle's train.json: the fine-tuning
    stage is refused naming the changed id (then redone with ``--overwrite true``), the source model is reused."""
    bundle = tmp_path / "bundle"
    shutil.copytree(CONFIGS.parent, bundle, ignore=shutil.ignore_patterns("models", "eval", "outputs", "runs", "data"))
    configs = bundle / "configs"
    run_bundle(configs, "training", bundle, fets_phantom, TINY)
    source = (bundle / "models" / "source.pt").stat().st_mtime_ns
    model = (bundle / "models" / "model.pt").stat().st_mtime_ns
    train = json.loads((configs / "train.json").read_text())
    flips = [i for i, t in enumerate(train["train"]["random_transforms"]) if t["_target_"] == "RandFlipd"]
    train["train"]["random_transforms"][flips[0]]["prob"] = 0.25
    (configs / "train.json").write_text(json.dumps(train, indent=4))
    cause = refused(configs, bundle, fets_phantom, TINY)
    assert isinstance(cause, StaleOutputError) and "the fine-tuning stage's outputs" in str(cause)
    assert f"config.train#random_transforms#{flips[0]}#prob: 0.5 -> 0.25" in str(cause)
    run_bundle(configs, "training", bundle, fets_phantom, TINY, overwrite=True)
    assert (bundle / "models" / "source.pt").stat().st_mtime_ns == source, "the source model is reused"
    assert (bundle / "models" / "model.pt").stat().st_mtime_ns != model, "the fine-tuning is redone"
    record = json.loads((bundle / "models" / "finetune.fingerprint.json").read_text())
    assert record["config"]["train#random_transforms"][flips[0]]["prob"] == 0.25 and record["complete"]


def test_the_overwrite_sequence_ends_with_a_trained_plain_baseline(tmp_path: Path, fets_phantom: str) -> None:
    """``training``; then ``training --risk#enabled false`` stops naming ``--overwrite``, leaving ``eval/`` and
    ``models/`` byte-identical; then the same with ``--overwrite true`` trains: the risk_map candidate, now without
    the map, is the plain candidate's run (equal fingerprints: trained once, taken over), and is chosen on a tie."""
    run_bundle(CONFIGS, "training", tmp_path, fets_phantom, SAFE)
    before = {name: folder_digest(tmp_path / name) for name in ("eval", "models")}
    cause = refused(CONFIGS, tmp_path, fets_phantom, SAFE, **{"risk#enabled": "false"})
    assert isinstance(cause, StaleOutputError) and "--overwrite true" in str(cause)
    assert "fine-tuning risk_map stage" in str(cause) and "config.risk#enabled: true -> false" in str(cause)
    assert {name: folder_digest(tmp_path / name) for name in ("eval", "models")} == before, "a refused run changes nothing"
    run_bundle(CONFIGS, "training", tmp_path, fets_phantom, SAFE, overwrite=True, **{"risk#enabled": "false"})
    candidates = tmp_path / "models" / "candidates"
    assert (candidates / "risk_map" / "model.pt").read_bytes() == (candidates / "plain" / "model.pt").read_bytes()
    record = json.loads((candidates / "risk_map" / "finetune.fingerprint.json").read_text())
    assert record["config"]["risk#enabled"] is False and record["complete"]
    report = json.loads((tmp_path / "eval" / "transfer_report.json").read_text())
    risk_map, plain = report["candidates"]["risk_map"], report["candidates"]["plain"]
    assert risk_map["score"] == plain["score"] and report["chosen"] in ("risk_map", "scratch")
    assert (tmp_path / "models" / "model.pt").is_file()


def test_a_run_whose_length_is_shorter_than_what_was_trained_is_refused(tmp_path: Path, fets_phantom: str) -> None:
    """A finished 2-epoch run is not a 1-epoch run (its best model may come from epoch 2): refused, never "reused"."""
    run_bundle(CONFIGS, "training", tmp_path, fets_phantom, {**TINY, "max_epochs": 2})
    cause = refused(CONFIGS, tmp_path, fets_phantom, TINY)
    assert isinstance(cause, StaleOutputError) and "epochs: 2 done -> 1 asked" in str(cause), exception_messages(cause)


class _Stop(KeyboardInterrupt):
    """What Ctrl-C raises, at a chosen moment of a run."""


def test_a_run_stopped_and_resumed_is_the_run_it_resumes(tmp_path: Path, fets_phantom: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #33, finding 1: the same command stopped twice -- once between two source epochs, once in the middle of
    a candidate's epoch -- and run again gives the uninterrupted run's choice, scores and models, bit for bit."""
    from transrisk_components.bundle.handlers.checkpoints import ResumableCheckpoints
    from transrisk_components.bundle.handlers.curves import LearningCurveWriter

    settings = {**SAFE, "source_epochs": 2, "max_epochs": 4, "val_interval": 2}
    straight = tmp_path / "straight"
    run_bundle(CONFIGS, "training", straight, fets_phantom, settings)

    stopped = tmp_path / "stopped"
    prune = ResumableCheckpoints._prune

    def stop_after_source_epoch_1(self: ResumableCheckpoints, engine) -> None:
        prune(self, engine)
        if self.prefix == "source" and engine.state.epoch == 1:
            raise _Stop()

    monkeypatch.setattr(ResumableCheckpoints, "_prune", stop_after_source_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        run_bundle(CONFIGS, "training", stopped, fets_phantom, settings)
    monkeypatch.undo()
    collect = LearningCurveWriter._collect_loss

    def stop_in_plain_epoch_3(self: LearningCurveWriter, engine) -> None:
        collect(self, engine)
        if self.title == "plain" and engine.state.epoch == 3 and engine.state.iteration % engine.state.epoch_length == 1:
            raise _Stop()

    monkeypatch.setattr(LearningCurveWriter, "_collect_loss", stop_in_plain_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        run_bundle(CONFIGS, "training", stopped, fets_phantom, settings)
    monkeypatch.undo()
    assert (stopped / "models" / "candidates" / "risk_map" / "model.pt").is_file()
    assert not json.loads((stopped / "models" / "candidates" / "plain" / "finetune.fingerprint.json").read_text())["complete"]
    run_bundle(CONFIGS, "training", stopped, fets_phantom, settings)

    reports = [json.loads((root / "eval" / "transfer_report.json").read_text()) for root in (straight, stopped)]
    for report in reports:
        report.pop("model")
    assert reports[0] == reports[1], "the resumed run chose and scored as the uninterrupted one"
    for name in ("source.pt", "model.pt", "candidates/risk_map/model.pt", "candidates/plain/model.pt", "candidates/scratch/model.pt"):
        assert (straight / "models" / name).read_bytes() == (stopped / "models" / name).read_bytes(), name
    assert (straight / "eval" / "candidates" / "plain" / "learning_curves.csv").read_text() == (
        stopped / "eval" / "candidates" / "plain" / "learning_curves.csv").read_text()


def test_cases_moved_between_training_and_validation_are_a_new_fine_tuning_run(tmp_path: Path, fets_phantom: str) -> None:
    """Two folds of k-fold choice read the same files in other roles: their fine-tuning stages differ by their splits
    (with the files alone they were one run, and the second fold a copy of the first)."""
    train = Path(__file__).resolve().parents[1] / "bundles" / "fets" / "configs" / "train.json"
    settings = {**SAFE, "bundle_root": str(tmp_path / "root"), "dataset_dir": fets_phantom, "safe#folds": 2}
    plan = TransferPipeline(BundleRequest((train,), settings), "training").plan(check_outputs=False)
    first, second = (c.finetune.fingerprint for c in plan.candidates[:2])
    assert [c.name for c in plan.candidates[:2]] == ["risk_map/fold1", "risk_map/fold2"]
    assert first["inputs"] == second["inputs"], "the same files are read"
    assert set(first["splits"]["target_val"]) <= set(second["splits"]["target_train"]), "cases moved from val to train"
    assert any(line.startswith("splits.target_val") for line in differences(first, second))
    assert all(c.same_as is None for c in plan.candidates), "no fold is another's copy"
