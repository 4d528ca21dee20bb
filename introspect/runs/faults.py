"""Faults a run meets from outside (a full disk, Ctrl-C) told apart from errors in the code, so
that entry points end them with one line that says how to continue. Imports neither torch nor
Lightning."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

# The message torch gives when ``torch.save`` cannot write (it drops the errno).
_TORCH_WRITE_FAILED = "file write failed"


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the errors it was raised from or during, innermost last."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def disk_full(err: BaseException, fallback: Path | str) -> str | None:
    """The path being written when ``err`` (or an error it came from) means that the disk or
    quota is full (``fallback`` when the error names none); None for any other error."""
    for e in _chain(err):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return str(e.filename or fallback)
        if isinstance(e, RuntimeError) and _TORCH_WRITE_FAILED in str(e):
            return str(fallback)
    return None


def interrupted(err: BaseException) -> bool:
    """Whether ``err`` is the end of a run stopped by SIGINT (Ctrl-C): a ``KeyboardInterrupt``,
    or the ``SystemExit(1)`` Lightning's trainer raises after catching one."""
    if isinstance(err, KeyboardInterrupt):
        return True
    return isinstance(err, SystemExit) and any(
        isinstance(e, KeyboardInterrupt) for e in _chain(err)
    )


def resume_hint(name: str | None, run_dir: str | None, root: str) -> str:
    """The settings that continue the run ``name`` (``run.name``) in ``run_dir`` (``run.dir``,
    None for ``root/name``), e.g. ``run.resume=true run.name=x`` (``run.dir=...`` when the run
    is not in ``root``)."""
    name = str(name or "")
    where = Path(str(run_dir)).expanduser().resolve() if run_dir else None
    default = Path(str(root)).expanduser().resolve() / name if name else None
    if where is None or where == default:
        return f"run.resume=true run.name={name}"
    return f"run.resume=true run.dir={where}"
