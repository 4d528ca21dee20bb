"""``status.json`` of a run directory: whether the run there is running, failed, interrupted
(SIGINT) or complete,
which stages it finished, and when.

A process killed without warning leaves ``running`` behind: readers treat any state but
``complete`` as an unfinished run (``compare`` skips it; ``run.resume=true`` continues it).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"
STATES = ("running", "failed", "interrupted", "complete")


def now() -> str:
    """The current local time in ISO 8601 with its UTC offset."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_json_atomic(path: Path | str, obj: Any) -> None:
    """Write ``obj`` as JSON so that readers see either the old file or the complete new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide results from the other users
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_status(run_dir: Path | str) -> dict[str, Any] | None:
    """The status of the run in ``run_dir``; None when it has no readable ``status.json``."""
    try:
        status = json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def update_status(run_dir: Path | str, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into the run's status (``state`` must be one of ``STATES``), stamp
    ``updated`` and write it atomically; returns the new status."""
    state = fields.get("state")
    if state is not None and state not in STATES:
        raise ValueError(f"state {state!r} is not one of {STATES}")
    status = read_status(run_dir) or {}
    status.update(fields)
    status["updated"] = now()
    write_json_atomic(Path(run_dir) / STATUS_FILE, status)
    return status


def mark_stage_done(run_dir: Path | str, stage: str, *, seconds: float | None = None) -> None:
    """Record that ``stage`` (``stage1``, ``stage2``, ``evaluation``) of the run finished, and
    its ``seconds`` under ``stage_seconds`` when given (a resumed stage's are replaced)."""
    status = read_status(run_dir) or {}
    done = list(status.get("stages_done", []))
    if stage not in done:
        done.append(stage)
    fields: dict[str, Any] = {"stages_done": done}
    if seconds is not None:
        fields["stage_seconds"] = dict(status.get("stage_seconds", {})) | {stage: seconds}
    update_status(run_dir, **fields)


def stages_done(run_dir: Path | str) -> list[str]:
    """The stages the run in ``run_dir`` finished (empty without a status)."""
    return list((read_status(run_dir) or {}).get("stages_done", []))


def describe(status: dict[str, Any] | None) -> str:
    """A short phrase for messages, e.g. ``running since 2026-12-01T10:00:00+0000 (stage2)``."""
    if status is None:
        return "no status.json"
    state = status.get("state", "unknown")
    if state == "failed":
        return f"failed: {status.get('error', 'unknown error')}"
    if state == "interrupted":
        return "interrupted (continue it with run.resume=true)"
    if state == "running":
        stage = status.get("stage")
        where = f", in {stage}" if stage else ""
        return (
            f"running or killed (started {status.get('started', '?')}{where}; "
            "continue it with run.resume=true)"
        )
    return str(state)
