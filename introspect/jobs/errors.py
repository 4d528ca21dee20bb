"""How a command ends on an error: the errors caused by what the user asked for (one line,
exit 2), a full disk, Ctrl-C and a stopped process of a multi-process run, each with its exit
code and the line saying how to go on."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from introspect.backbones import BackboneError, CheckpointError, HeadNotFoundError
from introspect.config import ConfigError
from introspect.data import DataError
from introspect.jobs.active import ActiveError
from introspect.quality import QualityDataError
from introspect.runs.distributed import report_stopped_process
from introspect.runs.errors import PipelineError
from introspect.runs.faults import disk_full, interrupted
from introspect.runs.lock import LockError

# Errors caused by what the user asked for: entry points print their message, not a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (
    PipelineError,
    ActiveError,
    DataError,
    BackboneError,
    CheckpointError,
    HeadNotFoundError,
    ConfigError,
    QualityDataError,
    LockError,
)


def quiet_library_warnings() -> None:
    """Hide warnings that concern library internals, not the user's run (for entry points)."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def exit_code(
    err: BaseException,
    *,
    out: Path | str,
    again: str,
    interrupted_line: str | None = None,
    stopped: int = 1,
) -> int | None:
    """Print the one line that ends a command on ``err`` and return its exit code: 2 for a user
    error and for a full disk while writing in ``out`` (the line ends with ``again``: how to go
    on), 130 for Ctrl-C when ``interrupted_line`` is given (printed as it is), ``stopped`` when
    another process of a multi-process run stopped (``report_stopped_process`` says so). None
    for any other error: the caller raises it again."""
    if isinstance(err, USER_ERRORS):
        print(f"error: {err}", file=sys.stderr)
        return 2
    if interrupted_line is not None and interrupted(err):
        print(interrupted_line, file=sys.stderr)
        return 130
    if not isinstance(err, Exception):
        return None
    full = disk_full(err, out)
    if full is not None:
        print(f"error: no space left on device while writing {full}; {again}", file=sys.stderr)
        return 2
    return stopped if report_stopped_process(err) else None
