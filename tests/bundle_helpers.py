"""Helpers shared by the bundle tests: run one run id through ``ConfigWorkflow`` and read its outputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigWorkflow


def run_bundle(
    configs_dir: Path,
    run_id: str,
    bundle_root: Path,
    dataset_dir: str,
    settings: Mapping[str, Any],
    configs: Sequence[str] = ("train.json",),
    **overrides: Any,
) -> ConfigWorkflow:
    """Initialise and run ``run_id`` of the bundle configs ``configs`` with ``settings`` and ``overrides``."""
    files = [str(configs_dir / name) for name in configs]
    values = {**settings, "bundle_root": str(bundle_root), "dataset_dir": dataset_dir, **overrides}
    workflow = ConfigWorkflow(config_file=files, run_id=run_id, logging_file=False, workflow_type=None, **values)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return workflow


def exception_messages(error: BaseException | None) -> str:
    """The messages of an exception and its causes (MONAI wraps errors raised while instantiating)."""
    texts = []
    while error is not None:
        texts.append(str(error))
        error = error.__cause__
    return "\n".join(texts)


def risk_maps(bundle_root: Path) -> list[Path]:
    """The cached risk maps of a bundle folder, every cache key."""
    return sorted((bundle_root / "outputs" / "risk_maps").glob("*/*_risk.nii.gz"))
