"""The real cause of a failed bundle run as the last lines a user sees.

MONAI evaluates config expressions inside its own ``try``, so an error raised by a stage reaches the user as
``RuntimeError: Failed to evaluate ConfigExpression: ...`` with the stage's message some 40 lines above it,
inside the chained traceback. :func:`install_excepthook` keeps Python's full traceback and then prints the
innermost cause once more at the very end::

    transrisk: the run stopped: StaleOutputError: the source stage's outputs ... Either pass --overwrite true ...

The bundle configs call it first in ``initialize``.
"""

from __future__ import annotations

import sys
import traceback
from types import TracebackType

__all__ = ["install_excepthook", "root_cause"]


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of ``error``'s ``__cause__`` / ``__context__`` chain."""
    seen = {id(error)}
    while True:
        inner = error.__cause__ or error.__context__
        if inner is None or id(inner) in seen:
            return error
        seen.add(id(inner))
        error = inner


def _excepthook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    traceback.print_exception(kind, error, tb)
    cause = root_cause(error)
    if cause is not error:
        sys.stderr.write(f"\ntransrisk: the run stopped: {type(cause).__name__}: {cause}\n")
    sys.stderr.flush()


def install_excepthook() -> None:
    """Make uncaught errors end with their innermost cause (idempotent)."""
    sys.excepthook = _excepthook
