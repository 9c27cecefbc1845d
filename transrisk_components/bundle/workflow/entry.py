"""The entry the bundles' run ids call, and the workflow class for Python callers.

``train.json``'s ``training`` (and ``pretrain``, ``risk_map``, ``finetune``, ``safe_training``, ``export_risk``) is
``$entry.run_stages('training', @bundle_root)``: :func:`run_stages` runs the stage graph
(:class:`~transrisk_components.bundle.workflow.pipeline.TransferPipeline`) over the config files and overrides of
this run (:class:`~transrisk_components.bundle.workflow.request.BundleRequest`). Those come from the command line
(``python -m monai.bundle run training ...``, ``torchrun ... -m monai.bundle run training ...``), or from a
:class:`TransferWorkflow` -- MONAI's ``ConfigWorkflow`` for the same configs, built in Python -- which hands them over
while it runs.
"""

from __future__ import annotations

import contextvars
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigWorkflow

from transrisk_components.bundle.io.paths import folder_of
from transrisk_components.bundle.workflow.errors import command_line_errors
from transrisk_components.bundle.workflow.pipeline import TransferPipeline
from transrisk_components.bundle.workflow.request import BundleRequest

__all__ = ["TransferWorkflow", "run_engine", "run_stages"]

_RUNNING: contextvars.ContextVar[BundleRequest | None] = contextvars.ContextVar("transrisk_request", default=None)


def run_stages(run_id: str, bundle_root: str) -> None:
    """Run the stages of ``run_id`` for the run this config belongs to.

    Args:
        run_id: the orchestrated run id (``training``, ``pretrain``, ...).
        bundle_root: the config's resolved ``bundle_root``, checked against the run's.

    Raises:
        RuntimeError: the run's config files and overrides are unknown (neither the command line of
            ``python -m monai.bundle run`` nor a :class:`TransferWorkflow`), or they belong to another bundle folder.
    """
    request = _RUNNING.get()
    if request is not None:
        TransferPipeline(request, run_id).run()
        return
    found = BundleRequest.from_command_line(sys.argv)
    if found is None:
        raise RuntimeError(
            f"run id {run_id!r} runs the bundle's stages as child workflows built from the config files and overrides "
            f"of this run. Start it with python -m monai.bundle run {run_id} --config_file ..., or in Python with "
            f"transrisk_components.bundle.workflow.entry.TransferWorkflow(config_file=..., run_id={run_id!r}, ...)"
        )
    _, request = found
    if request.bundle_root != Path(bundle_root).resolve():
        raise RuntimeError(f"this config's bundle_root {bundle_root} is not the command line's {request.bundle_root}: "
                           "build the workflow with TransferWorkflow to run its stages from Python")
    debug = request.overrides.get("debug", False)
    with command_line_errors(request.bundle_root / "runs" / "last_error.log", debug in (True, "true", "True", 1), sys.argv):
        TransferPipeline(request, run_id).run()


def run_engine(engine: Any, bundle_root: str, debug: bool = False, outputs: str | None = None) -> None:
    """``engine.run()`` for the run ids that run one engine (``evaluating``, ``inferring``): from the command line
    (``python -m monai.bundle run ...``) an error ends it in one paragraph with the traceback in
    ``<bundle_root>/runs/last_error.log`` (``debug``: printed too), as the stage graph's run ids do; from Python the
    exception is raised. With ``outputs`` (a folder), a finished run ends with the line ``transrisk: <n> case(s)
    done; outputs in <outputs>``, ``n`` the engine's iterations (one case each at batch size 1)."""
    if BundleRequest.from_command_line(sys.argv) is None:
        engine.run()
    else:
        with command_line_errors(Path(bundle_root) / "runs" / "last_error.log", debug, sys.argv):
            engine.run()
    if outputs is not None:
        print(f"transrisk: {engine.state.iteration} case(s) done; outputs in {outputs}", flush=True)


class TransferWorkflow(ConfigWorkflow):
    """MONAI's ``ConfigWorkflow`` that gives the bundle's stages its config files and overrides.

    Use it where you would build a ``ConfigWorkflow`` in Python (tests, the Model Zoo's unit-test pattern, the
    experiment grid): the run ids that run the stage graph need to know the files and overrides the workflow was
    built with, to build each stage from them. ``bundle_root`` defaults to the folder above the first config file's
    ``configs/``. Every other run id behaves as in ``ConfigWorkflow``; errors are raised as they are.

    Args:
        config_file: the config files, merged in order (a path or a list).
        workflow_type, run_id, meta_file, logging_file, init_id, final_id, tracking, properties_path: as
            ``ConfigWorkflow``'s.
        override: config id -> value.
    """

    def __init__(
        self,
        config_file: str | os.PathLike | Sequence[str | os.PathLike],
        meta_file: str | None = None,
        logging_file: str | bool | None = None,
        init_id: str = "initialize",
        run_id: str = "run",
        final_id: str = "finalize",
        tracking: str | dict | None = None,
        workflow_type: str | None = None,
        properties_path: str | None = None,
        **override: Any,
    ) -> None:
        files = BundleRequest.create(config_file).config_files
        override.setdefault("bundle_root", str(folder_of(files[0])))
        request = BundleRequest(files, dict(override), meta_file, tracking)
        super().__init__(
            config_file=[str(f) for f in files], meta_file=meta_file, logging_file=logging_file, init_id=init_id,
            run_id=run_id, final_id=final_id, tracking=tracking, workflow_type=workflow_type,
            properties_path=properties_path, **override,
        )
        self.request = request  # set after MONAI's constructor: its attribute lookup needs the workflow built

    def run(self) -> Any:
        """Run the run id, its stages built from this workflow's config files and overrides."""
        token = _RUNNING.set(self.request)
        try:
            return super().run()
        finally:
            _RUNNING.reset(token)
