"""How a run from the command line ends when it does not finish: one paragraph, the traceback in a file.

MONAI evaluates config expressions inside its own ``try``, so an error raised by a stage reaches the user as
``RuntimeError: Failed to evaluate ConfigExpression: ...`` with the stage's message tens of lines above it, inside
chained tracebacks. :func:`command_line_errors` wraps a run started from the command line instead:

- an error ends the run with one paragraph on stderr -- ``transrisk: the run stopped: <the real cause>`` (what went
  wrong, where, and the remedy, as the stage's message says them; :func:`real_cause` is the error under MONAI's
  wrappers) -- and the full traceback in ``<bundle_root>/runs/last_error.log`` (``--debug true`` prints it too);
- ``Ctrl-C`` (SIGINT) and ``kill`` (SIGTERM) end it with one line: what is kept and the command that resumes it;
- the tracebacks that engines' handlers log on their way out (MONAI's ``StatsHandler`` logs every exception it sees)
  are left out of the log lines -- their one-line message stays -- since the traceback is in the file.

A workflow built in Python gets the exceptions themselves.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import signal
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from transrisk_components.utils.distributed import rank_and_world
from transrisk_components.utils.io import atomic_write_text

__all__ = ["RunInterrupted", "command_line_errors", "real_cause", "resume_command"]

_WRAPPERS = ("Failed to evaluate ConfigExpression", "Failed to evaluate ", "Failed to instantiate component ")


class RunInterrupted(KeyboardInterrupt):
    """The run was stopped by a signal (SIGTERM); its exit code is ``128 + signal``."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


def real_cause(error: BaseException) -> BaseException:
    """The first exception in ``error``'s chain that is not one of MONAI's config wrappers.

    MONAI re-raises an error from a config expression or component as ``RuntimeError("Failed to evaluate ...")``
    or ``RuntimeError("Failed to instantiate component ...")`` (``raise ... from e``), once per nesting level;
    the error below those wrappers is the one that says what went wrong (and, for transrisk errors, what to do).
    """
    while isinstance(error, RuntimeError) and error.__cause__ is not None and str(error).startswith(_WRAPPERS):
        error = error.__cause__
    return error


def resume_command(argv: list[str]) -> str:
    """The command a user types to run ``argv`` (a ``python -m monai.bundle`` process's ``sys.argv``) again."""
    return " ".join(shlex.quote(a) for a in ["python", "-m", "monai.bundle", *argv[1:]])


def _raise_interrupted(signal_number: int, _: FrameType | None) -> None:
    raise RunInterrupted(signal_number)


@contextlib.contextmanager
def _log_records_without_tracebacks() -> Iterator[None]:
    """While the block runs, every log record keeps its message and loses the traceback ``logger.exception`` attaches
    (whatever logger or handler it goes to: MONAI's ``StatsHandler`` logs through a handler of its own)."""
    make = logging.getLogRecordFactory()

    def without_traceback(*args: object, **kwargs: object) -> logging.LogRecord:
        record = make(*args, **kwargs)
        record.exc_info, record.exc_text = None, None
        return record

    logging.setLogRecordFactory(without_traceback)
    try:
        yield
    finally:
        logging.setLogRecordFactory(make)


def _say(text: str) -> None:
    rank, world = rank_and_world()
    prefix = f"[rank {rank}] " if world > 1 else ""
    sys.stderr.write(f"\n{prefix}{text}\n")
    sys.stderr.flush()


@contextlib.contextmanager
def command_line_errors(log: Path, debug: bool, argv: list[str]) -> Iterator[None]:
    """Run the block; end an error or an interruption as the module docstring says (``SystemExit``).

    Args:
        log: the file the traceback goes to.
        debug: print the traceback on stderr too.
        argv: the command line (named as the command that resumes the run).
    """
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        with contextlib.nullcontext() if debug else _log_records_without_tracebacks():
            yield
    except KeyboardInterrupt as interrupt:
        number = interrupt.signal_number if isinstance(interrupt, RunInterrupted) else signal.SIGINT
        _say(f"transrisk: interrupted ({signal.Signals(number).name}). Kept: every finished stage, and the newest "
             f"epoch checkpoint of the one that was running. To resume, run the same command again: "
             f"{resume_command(argv)}")
        raise SystemExit(128 + number) from None
    except Exception as error:
        cause = real_cause(error)
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        try:
            atomic_write_text(log, text)
            where = f"full traceback: {log}"
        except OSError:
            where = "the traceback could not be written to a file"
        if debug:
            sys.stderr.write(text)
        logging.getLogger(__name__).debug("run stopped", exc_info=error)
        _say(f"transrisk: the run stopped: {type(cause).__name__}: {cause}\n({where}; --debug true prints it here)")
        raise SystemExit(1) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
