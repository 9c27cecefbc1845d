"""``scripts/export_zoo_bundle.py``: a bundle a Model Zoo user can download and run, passing the Zoo's own CI.

The slow tests export both bundles, with weights and ``eval_metrics`` from a tiny run made here, to a folder outside
the repository, and run ``tests/zoo_ci.py`` (the Zoo's ``verify_bundle.py -m full`` checks, offline, and its
``ci/unit_tests`` pattern) in a fresh virtual environment holding only what the bundles' metadata names (torch
pinned first, as ``.ci/run`` does; plus the Zoo CI's own ``jsonschema`` and ``pyyaml``), from inside each bundle
folder with only that folder on ``PYTHONPATH``. The fast tests check the export's refusals on crafted run folders.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from bundle_helpers import TINY, run_bundle
from monai.bundle import ConfigParser
from script_helpers import load_script

import transrisk_components
from transrisk_components.data.registry import get_dataset
from transrisk_components.utils.io import file_sha256

REPO = Path(__file__).resolve().parents[1]
#: ``scripts/export_zoo_bundle.py`` as a module.
EXPORT = load_script("export_zoo_bundle")
BUNDLES = ("fets", "iseg")
#: TINY without its network: the exported weights must fit the bundles' default network_def.
SETTINGS = {k: v for k, v in TINY.items() if not k.startswith("network_def#")}
#: The Zoo CI's own tools beside the bundle's requirements (its requirements-dev.txt): verify_metadata needs
#: jsonschema, reading large_files.yml needs pyyaml.
ZOO_CI_TOOLS = ("jsonschema", "pyyaml")


def _configs(bundle: str) -> Path:
    return REPO / "bundles" / bundle / "configs"


def _metadata(bundle: str) -> dict:
    return json.loads((_configs(bundle) / "metadata.json").read_text(encoding="utf-8"))


# --- the export's refusals, on crafted run folders (fast) --------------------------------------------------------


def _fake_run(root: Path, weights: Path) -> Path:
    """A run folder whose evaluation summary names ``weights`` (as ``evaluate.json`` writes it)."""
    (root / "eval").mkdir(parents=True)
    summary = {"dataset": "fets", "task": "multiclass", "model": {"file": str(weights), "sha256": file_sha256(weights)},
               "n_cases": 1, "regions": {r: {m: {"mean": 0.5} for m in ("dice", "hd95", "asd")} for r in ("ET", "TC", "WT")}}
    (root / "eval" / "metrics_summary.json").write_text(json.dumps(summary))
    (root / "eval" / "metrics_per_case.csv").write_text("case_id,region,dice,hd95,asd\nc1,ET,0.5,1,1\n")
    return root


def _network_weights(path: Path, **network: object) -> Path:
    parser = ConfigParser()
    parser.read_config(str(_configs("fets") / "inference.json"))
    parser.update({"bundle_root": str(path.parent), **network})
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


def test_the_export_refuses_weights_of_another_network_and_leaves_nothing_behind(tmp_path: Path) -> None:
    weights = _network_weights(tmp_path / "tiny.pt", **{k: v for k, v in TINY.items() if k.startswith("network_def#")})
    run = _fake_run(tmp_path / "run", weights)
    with pytest.raises(ValueError, match="does not fit the bundle's default network_def"):
        EXPORT.export_zoo_bundle("fets", tmp_path / "zoo", weights=str(run))
    assert list((tmp_path / "zoo").iterdir()) == [], "a failed export leaves no folder, not even a partial one"


def test_the_export_refuses_an_evaluation_of_another_model(tmp_path: Path) -> None:
    weights = _network_weights(tmp_path / "model.pt")
    run = _fake_run(tmp_path / "run", weights)
    assert EXPORT.read_evaluation(run).sha256 == file_sha256(weights)
    torch.save({"other": torch.zeros(1)}, weights)
    with pytest.raises(ValueError, match="changed since .* scored it"):
        EXPORT.export_zoo_bundle("fets", tmp_path / "zoo", weights=str(run))
    summary = json.loads((run / "eval" / "metrics_summary.json").read_text())
    del summary["model"]
    (run / "eval" / "metrics_summary.json").write_text(json.dumps(summary))
    with pytest.raises(ValueError, match="names no checkpoint"):
        EXPORT.export_zoo_bundle("fets", tmp_path / "zoo", weights=str(run))


def test_the_export_never_replaces_a_folder_and_needs_weights_for_a_url(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pass --weights RUN as well"):
        EXPORT.export_zoo_bundle("fets", tmp_path, weights_url="https://example.org/model.pt")
    (tmp_path / "fets").mkdir()
    (tmp_path / "fets" / "mine.txt").write_text("the user's")
    with pytest.raises(FileExistsError, match="never replaces"):
        EXPORT.export_zoo_bundle("fets", tmp_path)
    assert (tmp_path / "fets" / "mine.txt").read_text() == "the user's"


def test_the_export_describes_the_weights_own_run_and_warns_of_a_short_one(tmp_path: Path) -> None:
    models, eval_dir = tmp_path / "models", tmp_path / "eval"
    models.mkdir()
    eval_dir.mkdir()
    (models / "safe.fingerprint.json").write_text(json.dumps({
        "chosen": "scratch", "reason": "scratch: highest validation score 35.7; uncertain: ...",
        "candidates": {"risk_map": {"epochs": 4}, "scratch": {"epochs": 4}}}))
    (models / "source.fingerprint.json").write_text(json.dumps({"epochs": 2}))
    (eval_dir / "transfer_report.json").write_text(json.dumps({"validation_cases": 2}))
    (eval_dir / "splits.json").write_text(json.dumps({"dataset_dir": str(tmp_path / "real")}))
    training = EXPORT.read_training(models / "model.pt", eval_dir)
    assert training.sentence() == ("trained with 2 source epochs and 4 fine-tuning epochs; safe transfer kept the "
                                   "scratch candidate on 2 validation case(s)")
    warning = training.warning({"source_epochs": 60, "max_epochs": 100})
    assert "short run: 2 source epochs (default 60), 4 fine-tuning epochs (default 100)" in warning
    assert "phantom" not in warning
    assert EXPORT.TrainingRun(60, 100, None, None, None, False).warning({"source_epochs": 60, "max_epochs": 100}) == ""
    (models / "safe.fingerprint.json").unlink()
    with pytest.raises(FileNotFoundError, match="no record of how it was trained"):
        EXPORT.read_training(models / "model.pt", eval_dir)


# --- both bundles, exported with weights from a run, through the Zoo's CI (slow) ---------------------------------


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both bundles exported with ``--weights`` from a tiny run (default network) and ``--weights_url`` a local file."""
    work = tmp_path_factory.mktemp("zoo_export")
    assert REPO not in work.parents, "the export must lie outside the repository"
    for bundle in BUNDLES:
        data = get_dataset(bundle).make_phantom(work / "data" / bundle, subjects=12, seed=0, shape=(32, 32, 32))
        run = work / "runs" / bundle
        run_bundle(_configs(bundle), "training", run, str(data), SETTINGS)
        run_bundle(_configs(bundle), "evaluating", run, str(data), SETTINGS, ("train.json", "evaluate.json"))
        hosted = work / "hosted" / f"{bundle}_model.pt"
        hosted.parent.mkdir(exist_ok=True)
        shutil.copy(run / "models" / "model.pt", hosted)
        command = [sys.executable, str(REPO / "scripts" / "export_zoo_bundle.py"), bundle, "--out", str(work / "zoo"),
                   "--weights", str(run), "--weights_url", hosted.as_uri()]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert f"exported: {work / 'zoo' / bundle}" in done.stdout
    return work


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES)
def test_the_export_is_self_contained(zoo: Path, bundle: str) -> None:
    exported = zoo / "zoo" / bundle
    run = zoo / "runs" / bundle
    vendored = exported / "transrisk_components"
    sources = sorted(p.relative_to(REPO / "transrisk_components") for p in (REPO / "transrisk_components").rglob("*.py")
                     if p.relative_to(REPO / "transrisk_components").parts[0] != "experiments")
    assert sorted(p.relative_to(vendored) for p in vendored.rglob("*.py")) == sources
    assert not list(vendored.rglob("__pycache__")) and not list(exported.rglob("*.fingerprint.json"))
    assert sorted(p.name for p in (exported / "models").iterdir()) == ["model.pt"], "only the shipped weights"
    assert not {"eval", "outputs", "runs", "data"} & {p.name for p in exported.iterdir()}

    metadata = json.loads((exported / "configs" / "metadata.json").read_text(encoding="utf-8"))
    assert metadata["version"] == transrisk_components.__version__
    assert set(metadata["required_packages_version"]) == set(_metadata(bundle)["required_packages_version"])
    summary = json.loads((run / "eval" / "metrics_summary.json").read_text(encoding="utf-8"))
    assert (exported / "models" / "model.pt").read_bytes() == Path(summary["model"]["file"]).read_bytes()
    regions = {name.lower(): stats for name, stats in summary["regions"].items()}
    for key, value in metadata["eval_metrics"].items():
        _, metric, region = key.split("_", 2)
        expected = regions[region][metric]["mean"]
        assert value == (None if expected is None else pytest.approx(expected, abs=5e-5)), key
    assert metadata["eval_metrics"][next(k for k in metadata["eval_metrics"] if "dice" in k)] is not None
    splits = json.loads((run / "eval" / "splits.json").read_text(encoding="utf-8"))["splits"]
    assert metadata["eval_data"].startswith(f"the target_test split of the built-in {bundle} phantom, not real images")
    assert all(case["case_id"] in metadata["eval_data"] for case in splits["target_test"])
    assert summary["model"]["sha256"] in metadata["eval_data"]

    large = (exported / "large_files.yml").read_text(encoding="utf-8")
    assert f'url: "{(zoo / "hosted" / f"{bundle}_model.pt").as_uri()}"' in large
    assert f'hash_val: "{summary["model"]["sha256"]}"' in large and 'path: "models/model.pt"' in large
    readme = (exported / "docs" / "README.md").read_text(encoding="utf-8")
    for section in ("Model Overview", "Data", "Training configuration", "Performance", "MONAI Bundle Commands", "License"):
        assert f"\n## {section}\n" in readme, section
    assert "run inferring" in readme and summary["model"]["sha256"] in readme
    assert SETTINGS["safe#enabled"] is False, "one fine-tuning run: no candidate to name"
    trained = (f"trained with {SETTINGS['source_epochs']} source epochs and {SETTINGS['max_epochs']} fine-tuning epochs "
               "on the built-in phantom")
    assert trained in metadata["eval_data"] and trained in readme, "the weights' own run, not the defaults"
    assert "**Warning: these weights test the pipeline, they are not a model for clinical images**" in readme
    assert "trained on the built-in phantom" in readme and f"{SETTINGS['max_epochs']} fine-tuning epochs (default" in readme
    guide = (exported / "docs" / "guide.md").read_text(encoding="utf-8")
    assert guide.startswith("> From the transrisk repository's")
    # the shared document the bundle README links to travels with it, and the link points inside the bundle
    assert "(reuse_and_resume.md)" in guide and "../../../docs/" not in guide
    assert (exported / "docs" / "reuse_and_resume.md").read_text(encoding="utf-8") == (
        REPO / "docs" / "reuse_and_resume.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_the_zoo_ci_passes_in_a_fresh_venv(zoo: Path) -> None:
    """Fresh venv with only the metadata's packages; ``zoo_ci.py`` from inside each bundle folder, which alone is on
    ``PYTHONPATH``. The exported ``models/model.pt`` is removed first: ``large_files.yml`` must bring it back."""
    venv = zoo / "venv"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    pins: list[str] = []
    for bundle in BUNDLES:
        metadata = _metadata(bundle)
        pins += [f"monai=={metadata['monai_version']}", f"torch=={metadata['pytorch_version']}", f"numpy=={metadata['numpy_version']}"]
        pins += [f"{name}=={version}" for name, version in metadata["required_packages_version"].items()]
    torch_pin = next(p for p in pins if p.startswith("torch=="))
    for packages in ([torch_pin], sorted(set(pins)) + list(ZOO_CI_TOOLS)):
        done = subprocess.run([python, "-m", "pip", "install", "--quiet", *packages], capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"fresh venv: {time.perf_counter() - start:.0f} s")
    script = shutil.copy(REPO / "tests" / "zoo_ci.py", zoo / "zoo_ci.py")  # run from outside the repository
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    for bundle in BUNDLES:
        exported = zoo / "zoo" / bundle
        (exported / "models" / "model.pt").unlink()
        start = time.perf_counter()
        done = subprocess.run(
            [python, str(script), str(exported), str(zoo / "zoo_ci_data"), json.dumps(SETTINGS)],
            cwd=exported, capture_output=True, text=True, timeout=1200,
            env={**env, "PYTHONPATH": str(exported), "OMP_NUM_THREADS": "1"},
        )
        print(f"{bundle}: zoo_ci.py {time.perf_counter() - start:.0f} s")
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        passed = [line for line in done.stdout.splitlines() if line.startswith("zoo-ci: ")]
        print("\n".join(passed))
        for check in ("code from the bundle folder", "large files (1 downloaded", "directory", "metadata format",
                      "data shape", "torchscript", "inferring from the command line with the downloaded model",
                      "train ok", "train + evaluate", "infer ok", "downloaded model kept"):
            assert any(check in line for line in passed), f"{bundle}: {check} did not pass:\n{done.stdout[-3000:]}"
