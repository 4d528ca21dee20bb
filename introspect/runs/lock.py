"""Exclusive locks on run directories and evaluation folders: one process writes each at a time.

A lock is a file created with ``O_CREAT | O_EXCL`` holding the holder's pid, host and start
time as JSON. A second process is refused with a ``LockError`` naming the holder. The lock of
a process that died without releasing it (``kill -9``) on this host is stale: the next process
takes it over with a one-line notice on stderr. This module imports neither torch nor
Lightning.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["LOCK_FILE", "LockError", "RunLock", "acquire_lock"]

LOCK_FILE = ".introspect.lock"
# A lock file still empty after this many seconds belongs to a process killed while writing it.
_EMPTY_GRACE_S = 5.0
# A takeover guard older than this belongs to a process killed while taking over a stale lock.
_TAKEOVER_GRACE_S = 30.0


class LockError(RuntimeError):
    """The folder is locked by another process; the message names the holder and the fix."""


class RunLock:
    """A held lock on ``folder`` (its file is ``folder/LOCK_FILE``); ``release`` gives it up
    (also at interpreter exit), removing the folders this lock created (``folder`` and the
    parents made for it) when they are left empty."""

    def __init__(self, folder: Path, *, created: list[Path]) -> None:
        self.folder = folder
        self.path = folder / LOCK_FILE
        self._created = created
        self._held = True
        atexit.register(self.release)

    def release(self) -> None:
        """Remove the lock file if this process still holds it (idempotent)."""
        if not self._held:
            return
        self._held = False
        atexit.unregister(self.release)
        holder = _read(self.path)
        if holder is not None and holder.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        _remove_empty(self._created)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def _read(path: Path) -> dict[str, Any] | None:
    """The holder recorded in a lock file; None when it is missing, empty or not ours."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _describe(holder: dict[str, Any]) -> str:
    return (
        f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
        f"started {holder.get('started', '?')}"
    )


def _create(path: Path) -> bool:
    """Create the lock file holding this process; False when it exists already."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
    }
    with os.fdopen(fd, "w") as fh:
        json.dump(holder, fh)
    return True


def _stale_reason(path: Path) -> str | None:
    """Why the existing lock at ``path`` is stale (its holder is gone), or None while it may
    still be held."""
    holder = _read(path)
    if holder is None:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return "released meanwhile"
        return "left empty by a killed process" if age > _EMPTY_GRACE_S else None
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return None  # another machine's process cannot be checked from here
    return None if _alive(pid) else f"{_describe(holder)}, is gone"


def _take_over(path: Path, reason: str, what: str) -> bool:
    """Replace the stale lock at ``path`` by this process's; False when another process is
    taking it over at the same time."""
    guard = path.with_name(path.name + ".takeover")
    try:
        fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            if time.time() - guard.stat().st_mtime > _TAKEOVER_GRACE_S:
                guard.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        return False
    os.close(fd)
    try:
        if _stale_reason(path) is None:  # someone took it over first
            return False
        path.unlink(missing_ok=True)
        if not _create(path):
            return False
        if reason != "released meanwhile":
            print(f"notice: taking over the stale lock of {what} ({reason})", file=sys.stderr)
        return True
    finally:
        guard.unlink(missing_ok=True)


def _make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the folders created, deepest first."""
    created = []
    missing = folder
    while not missing.exists():
        created.append(missing)
        missing = missing.parent
    folder.mkdir(parents=True, exist_ok=True)
    return created


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty: only what a lock created and
    nothing else filled."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def acquire_lock(folder: Path | str, what: str) -> RunLock:
    """Lock ``folder`` (created if missing) for this process; ``what`` names it in messages,
    e.g. ``"run directory runs/x"``.

    Raises ``LockError`` naming the holder when another live process holds the lock.
    """
    folder = Path(folder)
    created = _make_folder(folder)
    path = folder / LOCK_FILE
    for _ in range(20):
        if _create(path):
            return RunLock(folder, created=created)
        reason = _stale_reason(path)
        if reason is not None and _take_over(path, reason, what):
            return RunLock(folder, created=created)
        if reason is None:
            break
        time.sleep(0.05)  # another process is taking a stale lock over: see who won
    holder = _read(path)
    who = _describe(holder) if holder else "a process that is starting"
    _remove_empty(created)
    raise LockError(
        f"{what} is in use by another process ({who}); wait for it to finish, or delete "
        f"{path} if that process is gone"
    )
