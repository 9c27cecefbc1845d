"""MONAI's bundle conformance check, as Model Zoo review runs it, on both bundles before any stage has run.

``ConfigWorkflow(...).initialize(); check_properties()`` builds every required property (``train#trainer``,
``train#dataset``, ``evaluator``, ...). It must pass on a fresh bundle folder: no source checkpoint, no risk maps,
no ``splits.json`` -- so the fine-tuning datalist and the inference inputs have to resolve lazily.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow

REPO = Path(__file__).resolve().parents[1]
CONFIG = {"train": "train.json", "infer": "inference.json"}


@pytest.mark.parametrize("workflow_type", sorted(CONFIG))
@pytest.mark.parametrize("bundle", ["fets", "iseg"])
def test_check_properties_pass_before_any_stage_ran(
    bundle: str, workflow_type: str, tmp_path: Path, data_fets_phantom: Path, data_iseg_phantom: Path
) -> None:
    configs = REPO / "bundles" / bundle / "configs"
    # a fresh bundle folder (outputs go here, not into the repository); the tiny test phantom as the data
    overrides: dict = {"bundle_root": str(tmp_path)}
    if workflow_type == "train":
        overrides["dataset_dir"] = str(data_fets_phantom if bundle == "fets" else data_iseg_phantom)
    workflow = ConfigWorkflow(
        config_file=str(configs / CONFIG[workflow_type]),
        workflow_type=workflow_type,
        meta_file=str(configs / "metadata.json"),
        logging_file=False,
        **overrides,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    written = [p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in written if p.suffix == ".pt" or "risk" in p.name], f"no stage may run: {written}"
