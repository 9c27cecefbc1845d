"""The real cause of a failed bundle run as the last lines a user sees.

MONAI evaluates config expressions inside its own ``try``, so an error raised by a stage reaches the user as
``RuntimeError: Failed to evaluate ConfigExpression: ...`` with the stage's message some 40 lines above it,
inside the chained traceback. :func:`install_excepthook` keeps Python's full traceback and then prints the
real cause (:func:`real_cause`: the error under MONAI's wrappers) once more at the very end::

    transrisk: the run stopped: StaleOutputError: the source stage's outputs ... Either pass --overwrite true ...

The bundle configs call it first in ``initialize``.
"""

from __future__ import annotations

import sys
import traceback
from types import TracebackType

__all__ = ["install_excepthook", "real_cause"]


_WRAPPERS = ("Failed to evaluate ConfigExpression", "Failed to evaluate ", "Failed to instantiate component ")


def real_cause(error: BaseException) -> BaseException:
    """The first exception in ``error``'s chain that is not one of MONAI's config wrappers.

    MONAI re-raises an error from a config expression or component as ``RuntimeError("Failed to evaluate ...")``
    or ``RuntimeError("Failed to instantiate component ...")`` (``raise ... from e``), once per nesting level;
    the error below those wrappers is the one that says what went wrong (and, for transrisk errors, what to do).
    """
    while (
        isinstance(error, RuntimeError)
        and error.__cause__ is not None
        and str(error).startswith(_WRAPPERS)
    ):
        error = error.__cause__
    return error


def _excepthook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    traceback.print_exception(kind, error, tb)
    cause = real_cause(error)
    if cause is not error:
        sys.stderr.write(f"\ntransrisk: the run stopped: {type(cause).__name__}: {cause}\n")
    sys.stderr.flush()


def install_excepthook() -> None:
    """Make uncaught errors end with their innermost cause (idempotent)."""
    sys.excepthook = _excepthook
