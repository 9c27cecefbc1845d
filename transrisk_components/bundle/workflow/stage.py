"""One stage of a run as a child ``ConfigWorkflow``: its config files, its overrides, the component it runs.

A :class:`StageConfig` is plain data (paths, ids, JSON values), so it can be built in one process and run in another
(a candidate on its own GPU). :meth:`StageConfig.parser` parses it for planning -- its settings and its fingerprint
are read from there, nothing runs; :meth:`StageConfig.run` builds a fresh workflow, initialises it (the config's
``initialize``: ``set_determinism(seed)``, under ``torchrun`` the process group) and runs the stage's component.
Every stage therefore starts from its own seed whatever ran before it in the process, which is what makes a resumed
run the run it resumes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from monai.bundle import ConfigParser, ConfigWorkflow

__all__ = ["StageConfig"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet_workflow_construction() -> Iterator[None]:
    """Keep MONAI from warning, once per stage, that the stage configures no logging of its own (the run did)."""
    monai_logger = logging.getLogger("monai.bundle.workflows")
    level = monai_logger.level
    monai_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        monai_logger.setLevel(level)


@dataclass(frozen=True)
class StageConfig:
    """A stage's child workflow.

    Attributes:
        name: what the logs and errors call it (``"source"``, ``"risk"``, ``"candidate plain"``).
        files: its config files, merged in order.
        overrides: config id -> value, applied after the files.
        component: the id of what it runs (``"source#stage"``, ``"risk_stage"``, ``"train#trainer"``,
            ``"validate#evaluator"``): a component with a ``run()`` method.
        meta_file: the metadata file (``None``: the bundle's ``configs/metadata.json``).
        tracking: MONAI's experiment tracking setting (``None``: none).
    """

    name: str
    files: tuple[str, ...]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    component: str = "train#trainer"
    meta_file: str | None = None
    tracking: str | dict | None = None

    def workflow(self) -> ConfigWorkflow:
        """A new, uninitialised workflow of this stage."""
        with _quiet_workflow_construction():
            return ConfigWorkflow(
                config_file=list(self.files),
                meta_file=self.meta_file,
                logging_file=False,
                workflow_type=None,
                tracking=self.tracking,
                **dict(self.overrides),
            )

    def parser(self) -> ConfigParser:
        """The stage's parsed config, for planning: nothing is initialised or run."""
        parser = self.workflow().parser
        parser.parse()
        return parser

    def value(self, parser: ConfigParser, config_id: str, default: Any = None) -> Any:
        """The resolved value of ``config_id`` in ``parser``, or ``default`` when the config lacks it."""
        return parser.get_parsed_content(config_id) if config_id in parser else default

    def run(self) -> Any:
        """Initialise a fresh workflow of this stage and run its component; return what ``run()`` returned."""
        workflow = self.workflow()
        workflow.initialize()
        logger.debug("stage %s: running %s", self.name, self.component)
        return workflow.parser.get_parsed_content(self.component).run()
