"""The run settings the lifecycle functions take (``run.*`` of the configuration), as a small
frozen record built once by the command layer."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class RunOptions:
    """Where a run goes and how it starts: ``dir`` (else ``root/name``), a fresh start, a
    replacement (``overwrite``) or a continuation (``resume``), its ``seed``; ``experiment``
    names a run that has no ``name`` yet."""

    name: str | None = None
    dir: str | None = None
    root: str = "runs"
    seed: int = 0
    overwrite: bool = False
    resume: bool = False
    experiment: str | None = None

    def named(self) -> RunOptions:
        """These options with a ``name``: the given one, else
        ``<experiment or 'default'>-<YYYYmmdd-HHMMSS>`` (now)."""
        if self.name:
            return self
        return replace(
            self, name=f"{self.experiment or 'default'}-{time.strftime('%Y%m%d-%H%M%S')}"
        )

    def placed(self, name: str, where: str) -> RunOptions:
        """These options with the run's chosen ``name`` and directory ``where``."""
        return replace(self, name=name, dir=where)


def with_run(config: dict[str, Any], run: RunOptions) -> dict[str, Any]:
    """A copy of the plain resolved ``config`` whose ``run.name``/``run.dir`` are ``run``'s
    (what ``config.yaml`` and the results record)."""
    section = dict(config.get("run", {})) | {"name": run.name, "dir": run.dir}
    return {**config, "run": section}
