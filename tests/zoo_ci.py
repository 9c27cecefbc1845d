"""The Model Zoo's CI checks, offline, against one exported bundle (``scripts/export_zoo_bundle.py``).

Run by ``tests/test_zoo_export.py`` inside a fresh virtual environment that holds only what the bundle's metadata
names (and the Zoo CI's own ``jsonschema`` and ``pyyaml``), from the bundle folder, with only that folder on
``PYTHONPATH`` -- as the Zoo's CI runs a bundle. It imports nothing of the transrisk repository; the bundle's own
``transrisk_components/`` must be what its configs reach.

What it checks, after the Zoo's ``ci/verify_bundle.py -m full`` and its ``ci/unit_tests`` pattern (their checks
re-implemented here, offline):

1. ``verify``: the necessary files (``configs/metadata.json``, ``LICENSE``) and the preferred ones
   (``models/model.pt``, ``configs/inference.json``), after downloading each file ``large_files.yml`` lists (with its
   hash); ``version`` in the ``changelog``; the metadata against the bundle's ``docs/meta_schema.json``;
   ``verify_net_in_out`` and ``ckpt_export`` (plus ``torch.jit.load``) on ``configs/inference.json``.
2. ``infer_as_downloaded``: ``python -m monai.bundle run inferring`` from the bundle folder with no ``PYTHONPATH`` at
   all (as a user types it after ``monai.bundle download``) predicts with the downloaded ``models/model.pt``.
3. ``unit_tests``: the Zoo's pattern -- train, then train + evaluate, then infer, each ``initialize``,
   ``check_properties`` (no missing property), ``run``, ``finalize``, with small settings -- with the bundle's
   ``TransferWorkflow`` (a ``ConfigWorkflow`` that hands its config files and overrides to the stages ``training``
   runs; a plain ``ConfigWorkflow`` cannot tell them); then the downloaded
   ``models/model.pt`` is byte-identical, training wrote ``models/trained/model.pt``, the evaluation scored that model,
   and inference wrote one prediction per test case.

Usage: ``python zoo_ci.py BUNDLE_DIR WORK_DIR SETTINGS_JSON``: the data, a small phantom that the bundle's own code
makes (as the Zoo's unit tests make theirs), goes under ``WORK_DIR``. Prints one ``zoo-ci: ... ok`` line per check
and raises on the first failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from monai.apps.utils import download_url
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out

NECESSARY = ("configs/metadata.json", "LICENSE")
PREFERRED = ("models/model.pt", "configs/inference.json")


def _ok(bundle: Path, check: str) -> None:
    print(f"zoo-ci: {bundle.name}: {check} ok", flush=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def download_large_files(bundle: Path) -> list[Path]:
    """Download every file ``large_files.yml`` lists that is not there yet, checking its hash; return their paths."""
    listing = bundle / "large_files.yml"
    if not listing.is_file():
        return []
    parser = ConfigParser()
    parser.read_config(str(listing))
    paths = []
    for entry in parser.get()["large_files"]:
        path = bundle / entry["path"]
        download_url(url=entry["url"], filepath=path, hash_val=entry.get("hash_val") or None,
                     hash_type=entry.get("hash_type") or "sha256")
        paths.append(path)
    return paths


def verify(bundle: Path) -> None:
    """The offline part of ``verify_bundle.py -m full`` (see the module docstring)."""
    downloaded = download_large_files(bundle)
    _ok(bundle, f"large files ({len(downloaded)} downloaded, hashes checked)")
    missing = [name for name in NECESSARY + PREFERRED if not (bundle / name).is_file()]
    assert not missing, f"{bundle}: missing {missing}"
    _ok(bundle, "directory")
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    assert metadata["version"] in metadata["changelog"], f"version {metadata['version']} is not in the changelog"
    _ok(bundle, "version and changelog")
    meta_file = str(bundle / "configs" / "metadata.json")
    verify_metadata(meta_file=meta_file, filepath=str(bundle / "docs" / "meta_schema.json"))
    _ok(bundle, "metadata format")
    config_file = str(bundle / "configs" / "inference.json")
    verify_net_in_out(net_id="network_def", meta_file=meta_file, config_file=config_file, bundle_root=str(bundle))
    _ok(bundle, "data shape")
    exported = bundle / "models" / "verify_model.ts"
    ckpt_export(net_id="network_def", filepath=str(exported), ckpt_file=str(bundle / "models" / "model.pt"),
                meta_file=meta_file, config_file=config_file, bundle_root=str(bundle))
    torch.jit.load(str(exported))
    _ok(bundle, "torchscript")


def infer_as_downloaded(bundle: Path, cases: list[dict[str, Any]], work: Path) -> None:
    """Inference from the command line, before any training: the downloaded model predicts ``cases``."""
    inputs = work / f"{bundle.name}_inputs.json"
    inputs.write_text(json.dumps([{"case_id": c["case_id"], "image": c["image"][0]} for c in cases]), encoding="utf-8")
    out = work / f"{bundle.name}_downloaded_predictions"
    command = [sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file", "configs/inference.json",
               "--input", str(inputs), "--output_dir", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(command, cwd=bundle, env=env, capture_output=True, text=True, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert f"using {bundle / 'models' / 'model.pt'}" in log, f"the downloaded model was not the one used:\n{log[-3000:]}"
    assert len(list(out.glob("*_seg.*"))) == len(cases), sorted(out.iterdir())
    _ok(bundle, f"inferring from the command line with the downloaded model ({len(cases)} cases)")


def _check_workflow(bundle: Path, workflow: ConfigWorkflow, name: str) -> None:
    """The Zoo's ``check_workflow(..., check_properties=True)``."""
    workflow.initialize()
    missing = workflow.check_properties()
    assert not missing, f"{name}: check_properties failed: {missing}"
    workflow.run()
    workflow.finalize()
    _ok(bundle, name)


def unit_tests(bundle: Path, dataset_dir: str, settings: dict[str, Any]) -> None:
    """Train, train + evaluate, infer, as the Zoo's ``ci/unit_tests`` do (see the module docstring)."""
    configs = bundle / "configs"
    common = {"logging_file": str(configs / "logging.conf"), "meta_file": str(configs / "metadata.json")}
    train = {"bundle_root": str(bundle), "dataset_dir": dataset_dir, **settings}
    shipped = bundle / "models" / "model.pt"
    shipped_sha = _sha256(shipped)
    from transrisk_components.bundle.workflow.entry import TransferWorkflow  # the bundle's own copy

    workflow = TransferWorkflow
    _check_workflow(bundle, workflow(workflow_type="train", config_file=str(configs / "train.json"), **common, **train), "train")
    evaluate = [str(configs / "train.json"), str(configs / "evaluate.json")]
    _check_workflow(bundle, workflow(workflow_type="train", config_file=evaluate, **common, **train), "train + evaluate")
    infer = {"bundle_root": str(bundle), "patch_size": settings["patch_size"]}
    _check_workflow(bundle, workflow(workflow_type="infer", config_file=str(configs / "inference.json"), **common, **infer), "infer")

    trained = bundle / "models" / "trained" / "model.pt"
    assert _sha256(shipped) == shipped_sha, f"{shipped} was changed by training"
    assert trained.is_file(), f"training wrote no {trained}"
    summary = json.loads((bundle / "eval" / "metrics_summary.json").read_text(encoding="utf-8"))
    assert summary["model"] == {"file": str(trained.resolve()), "sha256": _sha256(trained)}, summary.get("model")
    test_cases = json.loads((bundle / "eval" / "splits.json").read_text(encoding="utf-8"))["splits"]["target_test"]
    predictions = sorted((bundle / "eval" / "predictions").glob("*_seg.*"))
    assert len(predictions) == len(test_cases), f"{len(predictions)} predictions for {len(test_cases)} test cases"
    _ok(bundle, "downloaded model kept, trained model used")


def main(bundle_dir: str, work_dir: str, settings_json: str) -> None:
    bundle = Path(bundle_dir).resolve()
    import transrisk_components
    from transrisk_components.data.registry import get_dataset

    origin = Path(transrisk_components.__file__).resolve()
    assert bundle in origin.parents, f"transrisk_components came from {origin}, not from the bundle {bundle}"
    _ok(bundle, f"code from the bundle folder ({origin.relative_to(bundle)})")
    verify(bundle)
    train = json.loads((bundle / "configs" / "train.json").read_text(encoding="utf-8"))
    spec = get_dataset(train["dataset_name"])
    work = Path(work_dir)
    data = spec.make_phantom(work / train["dataset_name"], subjects=12, seed=0, shape=(32, 32, 32))
    infer_as_downloaded(bundle, spec.datalist(data, modalities=[train["target_modality"]])[:2], work)
    unit_tests(bundle, str(data), json.loads(settings_json))


if __name__ == "__main__":
    main(*sys.argv[1:])
