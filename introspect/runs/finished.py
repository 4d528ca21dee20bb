"""A finished run opened for reading: its record (``results.json``, or ``active.json`` of an
active-learning run) parsed, its saved config checked to be plain data and the record checked
against its integrity digest. Every command that reads a finished run opens it here. This
module imports neither torch nor Lightning."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from introspect.config.loader import first_interpolation
from introspect.runs.integrity import RecordModifiedError, check_record, record_note
from introspect.runs.status import describe, read_status

RESULTS = "results.json"
ACTIVE = "active.json"


class FinishedRunError(ValueError):
    """A directory that does not hold a usable finished run; the message names the fix."""


@dataclass(frozen=True)
class FinishedRun:
    """A finished run: its directory, the record read from it (``record_file``) and whether
    that record matches its integrity digest (``verified``, ``unverified`` or ``modified``)."""

    path: Path
    results: dict[str, Any]
    record: str
    record_file: str = RESULTS

    @property
    def config(self) -> dict[str, Any]:
        """The resolved config saved in the record (``run.config``)."""
        return self.results["run"]["config"]

    @property
    def seed(self) -> int:
        """``run.seed`` of the run."""
        return int(self.config["run"]["seed"])

    @property
    def note(self) -> str | None:
        """The line tables carry when the record is not verified (None when it is)."""
        return record_note(self.record, self.path / self.record_file)


def is_active_run(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a finished active-learning run (its ``active.json``)."""
    return (Path(path).expanduser() / ACTIVE).is_file()


def open_finished_run(
    path: str | os.PathLike[str],
    *,
    allow_modified: bool = False,
    record_file: str = RESULTS,
    required: Sequence[str] = ("splits",),
) -> FinishedRun:
    """The finished run in ``path``, read from its ``record_file``.

    ``FinishedRunError`` when its ``status.json`` says it is not complete, when the record is
    missing, no JSON object with ``run.config`` and the ``required`` top-level keys, when the
    saved config holds an interpolation (a record is data: never resolved), or when the record
    does not match its integrity digest (unless ``allow_modified``; it then reads
    ``modified``)."""
    run_dir = Path(path).expanduser().resolve()
    status = read_status(run_dir)
    if status is not None and status.get("state") != "complete":
        raise FinishedRunError(f"the run in {run_dir} is not complete ({describe(status)})")
    file = run_dir / record_file
    if not file.is_file():
        raise FinishedRunError(
            f"{run_dir} has no {record_file}; give the directory of a finished run (a run "
            f"writes {record_file} last)"
        )
    try:
        results = json.loads(file.read_text())
        config = results["run"]["config"]
        for key in required:
            results[key]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise FinishedRunError(f"{file} is not a results file of introspect ({err})") from None
    if not isinstance(config, dict):
        raise FinishedRunError(f"{file} is not a results file of introspect (run.config)")
    key = first_interpolation(config)
    if key is not None:
        raise FinishedRunError(
            f"{file}: run.config.{key} holds an interpolation ('${{...}}'), which introspect "
            "never writes; a record is data and is not resolved: leave this run out"
        )
    try:
        record = check_record(file, run_dir, allow_modified=allow_modified)
    except RecordModifiedError as err:
        raise FinishedRunError(str(err)) from None
    return FinishedRun(run_dir, results, record, record_file)
