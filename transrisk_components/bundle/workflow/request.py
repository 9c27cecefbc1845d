"""What a run was asked to do: its config files and its overrides, from which every stage's config is built.

A run of the bundle's ``training`` (and ``pretrain``, ``risk_map``, ``finetune``, ``export_risk``) runs each stage
as a child ``ConfigWorkflow`` over the bundle's files with the same overrides the user gave. Those come from one of
two places, both explicit:

- :meth:`BundleRequest.from_command_line`: the command this process was started with,
  ``python -m monai.bundle run training --config_file ... --max_epochs 4`` (also under ``torchrun``), read with
  ``fire`` exactly as MONAI's command line reads it (``--args_file`` merged as MONAI merges it);
- :class:`~transrisk_components.bundle.workflow.entry.TransferWorkflow`, a ``ConfigWorkflow`` built in Python with
  ``config_file`` and overrides, which hands them over itself.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transrisk_components.bundle.io.paths import folder_of

__all__ = ["BundleRequest", "WORKFLOW_ARGUMENTS"]

#: ``monai.bundle run`` arguments that configure the workflow rather than override config ids.
WORKFLOW_ARGUMENTS = ("run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file")


def _config_files(config_file: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[Path, ...]:
    """The config files as absolute paths: a list, a path, or MONAI's comma-separated string of paths."""
    if isinstance(config_file, (str, os.PathLike)):
        text = str(config_file)
        items: Sequence[str | os.PathLike] = text.split(",") if "," in text and not Path(text).is_file() else [text]
    else:
        items = config_file
    return tuple(Path(item).expanduser().resolve() for item in items)


class _Parsed:
    """The arguments ``fire`` gave to ``run``, wrapped so that ``fire`` does not call into them."""

    def __init__(self, arguments: dict[str, Any]) -> None:
        self.arguments = arguments


def _run_arguments(
    run_id: str | None = None,
    init_id: str | None = None,
    final_id: str | None = None,
    meta_file: str | None = None,
    config_file: Any = None,
    logging_file: Any = None,
    tracking: Any = None,
    args_file: str | None = None,
    **override: Any,
) -> _Parsed:
    """What ``monai.bundle.scripts.run`` receives (its signature), as ``fire`` parses a command line for it."""
    workflow = {"run_id": run_id, "init_id": init_id, "final_id": final_id, "meta_file": meta_file,
                "config_file": config_file, "logging_file": logging_file, "tracking": tracking, "args_file": args_file}
    return _Parsed({**workflow, **override})


@dataclass(frozen=True)
class BundleRequest:
    """A run's config files (merged in order) and overrides (config id -> value, as MONAI receives them).

    Attributes:
        config_files: absolute paths; the first is the bundle's ``train.json`` (its folder holds the stage files).
        overrides: config id -> value.
        meta_file: the metadata file the run was given (``None``: the bundle's own).
        tracking: MONAI's experiment tracking setting (``--tracking mlflow``), passed to every training stage.
    """

    config_files: tuple[Path, ...]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    meta_file: str | None = None
    tracking: str | dict | None = None

    def __post_init__(self) -> None:
        if not self.config_files:
            raise ValueError("a bundle run needs at least one config file")

    @classmethod
    def create(
        cls,
        config_file: str | os.PathLike | Sequence[str | os.PathLike],
        overrides: Mapping[str, Any] | None = None,
        meta_file: str | None = None,
        tracking: str | dict | None = None,
    ) -> BundleRequest:
        """A request from MONAI's ``config_file`` argument (a path, a list, or comma-separated paths)."""
        return cls(_config_files(config_file), dict(overrides or {}), meta_file, tracking)

    @classmethod
    def from_command_line(cls, argv: Sequence[str]) -> tuple[str, BundleRequest] | None:
        """``(run_id, request)`` of ``python -m monai.bundle run RUN_ID ...`` in ``argv``; ``None`` for another command.

        ``argv`` is ``sys.argv`` of a process started with ``python -m monai.bundle`` (or ``torchrun -m
        monai.bundle``): its ``argv[0]`` is MONAI's ``bundle/__main__.py``.
        """
        if len(argv) < 2 or Path(argv[0]).parts[-2:] != ("bundle", "__main__.py") or argv[1] != "run":
            return None
        import fire
        from monai.bundle.scripts import update_kwargs

        with contextlib.redirect_stdout(io.StringIO()):  # fire describes the object it returns
            parsed = fire.Fire({"run": _run_arguments}, command=list(argv[1:]), name="monai.bundle")
        arguments = update_kwargs(args=parsed.arguments.pop("args_file", None), **parsed.arguments)
        if arguments.get("config_file") is None:
            return None
        run_id = arguments.pop("run_id", None) or "run"
        workflow = {k: arguments.pop(k, None) for k in WORKFLOW_ARGUMENTS if k != "run_id"}
        return run_id, cls.create(workflow["config_file"], arguments, workflow["meta_file"], workflow["tracking"])

    @property
    def configs_dir(self) -> Path:
        """The folder of the first config file: the bundle's ``configs/``, holding the stage files."""
        return self.config_files[0].parent

    @property
    def bundle_root(self) -> Path:
        """The bundle folder: the ``bundle_root`` override, or the folder above ``configs/``."""
        given = self.overrides.get("bundle_root")
        return Path(given).expanduser().resolve() if given else folder_of(self.config_files[0])

    def files(self, *stage_files: str) -> list[str]:
        """The config files of a stage: the request's files with the bundle's ``stage_files`` (file names in
        :attr:`configs_dir`) merged after them; a file already among the request's is not merged twice."""
        files = [str(p) for p in self.config_files]
        for name in stage_files:
            path = str((self.configs_dir / name).resolve())
            if path not in files:
                files.append(path)
        return files

    def with_overrides(self, overrides: Mapping[str, Any]) -> BundleRequest:
        """The same request with ``overrides`` added (they win)."""
        return BundleRequest(self.config_files, {**self.overrides, **overrides}, self.meta_file, self.tracking)
