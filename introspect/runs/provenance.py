"""Provenance of a result: package versions, the code's git commit, the device, the command."""

from __future__ import annotations

import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from importlib import import_module, metadata
from pathlib import Path
from typing import Any

PACKAGES = ("introspect", "torch", "torchvision", "lightning", "torchmetrics", "numpy")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None when not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            # The module's own version names the build (e.g. torch's "+cu130"), else metadata's.
            versions[name] = str(import_module(name).__version__)
        except (ImportError, AttributeError):
            try:
                versions[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                versions[name] = None
    return versions


def git_state(path: Path | str | None = None) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git checkout holding ``path`` (default: this package's
    source); None when it is not in a checkout or git is unavailable."""
    where = Path(path) if path is not None else Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(where), *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def device_description(device: Any = None) -> dict[str, Any]:
    """The machine and, for a CUDA ``device``, the GPU that computed a result."""
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": str(device) if device is not None else "cpu",
    }
    if device is not None and str(device).startswith("cuda"):
        import torch

        index = torch.device(device).index or 0
        info["gpu"] = torch.cuda.get_device_name(index)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def provenance(device: Any = None, *, world_size: int = 1) -> dict[str, Any]:
    """Everything needed to say what produced a result: versions, git commit (when the code
    is a checkout), device, number of processes, command line and working directory."""
    return {
        "versions": package_versions(),
        "git": git_state(),
        "device": device_description(device),
        "processes": world_size,
        "command": shlex.join([sys.executable, *sys.argv]),
        "cwd": os.getcwd(),
    }


def results_header(
    name: str,
    config: dict[str, Any],
    *,
    device: Any = None,
    world_size: int = 1,
    seed: int | None = None,
    started: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The ``run`` section every record of a command starts with: run name, creation time,
    seed (when given), the resolved ``config``, provenance, ``extra`` entries (e.g.
    ``evaluation_of``) and the seconds since ``started`` (a ``time.perf_counter`` value)."""
    header: dict[str, Any] = {"name": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if seed is not None:
        header["seed"] = seed
    header["config"] = config
    header["provenance"] = provenance(device, world_size=world_size)
    header.update(extra)
    if started is not None:
        header["seconds"] = round(time.perf_counter() - started, 2)
    return header
