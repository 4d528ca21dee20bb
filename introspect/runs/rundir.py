"""Run directories: where a run goes, the checks made before any work, creation, loggers.

A directory holds one run. Starting a run where one exists is refused unless ``run.overwrite``
(the directory is cleared first) or ``run.resume`` (the run there is continued; its saved
config must agree with the new one). This module imports neither torch nor Lightning at import
time, so the checks run before the heavy imports.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from introspect.config import ConfigError, save_config
from introspect.config.loader import first_interpolation, leaf_paths
from introspect.config.schema import Config
from introspect.runs.status import (
    STATUS_FILE,
    describe,
    now,
    read_status,
    update_status,
    write_json_atomic,
)

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger

__all__ = [
    "build_loggers",
    "check_run_dir",
    "evaluation_dir",
    "evaluation_tag",
    "holds_run",
    "log_version",
    "prepare_run_dir",
    "write_json_atomic",
]

# Keys a resumed run may change: where and how visibly it runs, not what it computes.
_RESUMABLE_CHANGES = (
    "run.name",
    "run.dir",
    "run.root",
    "run.resume",
    "run.overwrite",
    "logger",
    "scores",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "trainer.timeout_s",
    "data.num_workers",
    "data.pin_memory",
    "data.root",
    "stage2.cache_dir",
    "eval.cache_dir",
)


class RunDirError(ConfigError):
    """A run directory that cannot be used as asked; the message names the fix."""


def is_secondary_process() -> bool:
    """Whether this process was started by a multi-process launcher as a rank other than zero
    (Lightning's ddp launcher, torchrun, SLURM): such processes leave the directory to rank 0."""
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"):
        value = os.environ.get(var)
        if value not in (None, "", "0"):
            return True
    return False


def holds_run(path: Path | str) -> bool:
    """Whether ``path`` holds (part of) a run: its config, status, checkpoints or results."""
    path = Path(path)
    markers = ("config.yaml", STATUS_FILE, "results.json", "checkpoints", "stage2")
    return path.is_dir() and any((path / m).exists() for m in markers)


def run_path(cfg: DictConfig) -> Path:
    """Fill ``run.name`` (default ``<experiment or 'default'>-<YYYYmmdd-HHMMSS>``) and return
    the absolute run directory: ``run.dir`` or ``run.root/run.name``."""
    if not cfg.run.name:
        cfg.run.name = f"{cfg.experiment or 'default'}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.run.dir) if cfg.run.dir else Path(cfg.run.root) / cfg.run.name
    return run_dir.expanduser().resolve()


def _check_writable(path: Path) -> None:
    """``RunDirError`` unless ``path`` is, or can be created as, a writable directory."""
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run directory {path} is a file; set run.dir or run.name to a folder")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RunDirError(f"cannot create run directory {path}: {ancestor} is not a folder")
    try:  # a real write: permissions alone say nothing for root or read-only mounts
        os.rmdir(tempfile.mkdtemp(prefix=".introspect-probe-", dir=ancestor))
    except OSError as err:
        raise RunDirError(
            f"cannot create run directory {path} ({err.strerror} in {ancestor}); set run.dir "
            "or run.root to a writable folder"
        ) from None


def _changed_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ, except the ones a resumed run may change and settings
    added to the schema after the run was made that are still at their defaults."""
    a, b = leaf_paths(saved), leaf_paths(current)
    defaults = _schema_defaults()
    keys = sorted(set(a) | set(b))
    return [
        k
        for k in keys
        if a.get(k) != b.get(k)
        and not any(k == p or k.startswith(p + ".") for p in _RESUMABLE_CHANGES)
        and not (k not in a and k in defaults and b.get(k) == defaults[k])
    ]


def check_run_dir(cfg: DictConfig) -> Path:
    """The checks made before any work (fills ``run.name``; returns the run directory).

    Refuses a directory that holds a run unless ``run.overwrite`` or ``run.resume``; with
    ``run.resume``, a run must be there, unfinished, made with the same config; the directory
    must be creatable and writable. Processes of rank > 0 only compute the path.
    """
    path = run_path(cfg)
    if cfg.run.overwrite and cfg.run.resume:
        raise RunDirError("run.overwrite=true and run.resume=true exclude each other; pick one")
    if is_secondary_process():
        return path
    _check_writable(path)
    if cfg.run.resume:
        if not holds_run(path):
            raise RunDirError(
                f"run.resume=true but {path} holds no run to continue; give the run's "
                "run.name or run.dir, or drop run.resume"
            )
        status = read_status(path) or {}
        if status.get("state") == "complete":
            raise RunDirError(
                f"the run in {path} is complete; nothing to resume (run.overwrite=true redoes it)"
            )
        try:
            saved = OmegaConf.to_container(OmegaConf.load(path / "config.yaml"), resolve=False)
        except Exception as err:  # missing or unreadable: nothing to compare with
            raise RunDirError(
                f"{path} has no readable config.yaml ({err}); it cannot be resumed, only "
                "overwritten (run.overwrite=true)"
            ) from None
        key = first_interpolation(saved)
        if key is not None:  # a saved config is data: never resolved, not even to compare
            raise RunDirError(
                f"{path / 'config.yaml'}: {key} holds an interpolation ('${{...}}'), which "
                "train.py never writes; it cannot be resumed, only overwritten "
                "(run.overwrite=true)"
            )
        current = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(saved, dict) and isinstance(current, dict)
        changed = _changed_keys(saved, current)
        if changed:
            shown = ", ".join(
                f"{k} ({OmegaConf.select(OmegaConf.create(saved), k)!r} -> "
                f"{OmegaConf.select(cfg, k)!r})"
                for k in changed[:5]
            )
            raise RunDirError(
                f"run.resume=true but the config differs from the run in {path}: {shown}; "
                "resume with the run's own settings, or start a new run"
            )
    elif holds_run(path) and not cfg.run.overwrite:
        raise RunDirError(
            f"{path} already holds a run ({_state(path)}); a directory holds one run: choose "
            "another run.name/run.dir, continue it with run.resume=true, or replace it with "
            "run.overwrite=true"
        )
    return path


def _state(path: Path) -> str:
    status = read_status(path)
    return str(status.get("state", "unknown state")) if status else "no status.json"


def prepare_run_dir(cfg: DictConfig) -> Path:
    """Create the run directory (cleared first with ``run.overwrite``), fill
    ``run.name``/``run.dir`` in ``cfg``, save ``config.yaml`` and mark the run ``running``.

    In a multi-process run, rank zero picks name and path for every process and alone writes.
    """
    from introspect.runs.distributed import barrier, broadcast_from_zero, is_global_zero

    path = run_path(cfg)
    name, where = broadcast_from_zero((cfg.run.name, str(path)))
    cfg.run.name, cfg.run.dir = name, where
    run_dir = Path(where)
    if is_global_zero():
        if cfg.run.overwrite and run_dir.is_dir():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        previous = read_status(run_dir) if cfg.run.resume else None
        if not cfg.run.resume:
            save_config(cfg, run_dir / "config.yaml")
        resumes = (previous or {}).get("resumes", []) + ([now()] if cfg.run.resume else [])
        update_status(
            run_dir,
            state="running",
            stage="setup",
            started=(previous or {}).get("started", now()),
            resumes=resumes,
            error=None,
            pid=os.getpid(),
            command=" ".join(sys.argv),
        )
    barrier()
    return run_dir


def log_version(cfg: DictConfig, run_dir: Path) -> str:
    """The CSV log folder of this process's part of the run: ``""`` for a fresh run,
    ``resume-K`` for its K-th resumption (earlier logs are kept)."""
    if not cfg.run.resume:
        return ""
    k = 1
    while (run_dir / "logs" / f"resume-{k}").exists():
        k += 1
    return f"resume-{k}"


def build_loggers(cfg: DictConfig, run_dir: Path, *, csv_version: str = "") -> list[Logger]:
    """CSV logger in ``<run>/logs/<csv_version>`` and, if enabled, a never-prompting W&B logger
    (offline); none on processes other than rank zero (Lightning reduces their metrics to it).

    A CSV logger replaces the ``metrics.csv`` of its folder, so every job logs under its own
    ``csv_version`` (re-evaluations under their own folder, resumed runs as ``resume-K``).
    """
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from introspect.runs.distributed import is_global_zero

    loggers: list[Logger] = []
    if not is_global_zero():
        return loggers
    if cfg.logger.csv:
        loggers.append(CSVLogger(save_dir=str(run_dir), name="logs", version=csv_version))
    if cfg.logger.wandb:
        os.environ.setdefault("WANDB_SILENT", "true")
        if cfg.logger.wandb_mode != "online":
            # Never prompt for a login: offline and disabled runs need no account.
            os.environ.setdefault("WANDB_MODE", cfg.logger.wandb_mode)
        loggers.append(
            WandbLogger(
                name=cfg.run.name,
                save_dir=str(run_dir),
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                tags=list(cfg.logger.tags),
                mode=cfg.logger.wandb_mode,
                config=_plain(cfg),
            )
        )
    return loggers


def _plain(cfg: DictConfig) -> dict[str, Any]:
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return out


def evaluation_tag(overrides: list[str]) -> str:
    """A folder name for a re-evaluation from its overrides (``default`` without any), e.g.
    ``eval.corruptions=[fog] eval.severities=[5]`` -> ``corruptions=fog_severities=5``."""
    import hashlib
    import re

    parts = []
    for arg in overrides:
        key, _, value = arg.partition("=")
        if key in ("trainer", "logger") or key.startswith(("trainer.", "logger.")):
            continue  # how it runs, not what it measures
        key = key.removeprefix("eval.")
        value = re.sub(r"[\[\]\s'\"]", "", value)
        parts.append(f"{key}={value}")
    if not parts:
        return "default"
    tag = re.sub(r"[^A-Za-z0-9._,=+-]", "-", "_".join(parts))
    if len(tag) > 80:
        tag = tag[:70] + "-" + hashlib.sha256(tag.encode()).hexdigest()[:8]
    return tag


def evaluation_dir(run_dir: Path, tag: str) -> Path:
    """``<run>/evaluations/<tag>``, checked before any work: the run must be complete and the
    folder must not hold results already (a results file is a record, never replaced)."""
    if not tag or tag in (".", "..") or "/" in tag or "\\" in tag:
        raise RunDirError(f"tag={tag!r} must be a plain folder name (no '/')")
    status = read_status(run_dir)
    if status is not None and status.get("state") != "complete":
        raise RunDirError(f"the run in {run_dir} is not complete ({describe(status)})")
    out = run_dir / "evaluations" / tag
    if (out / "results.json").exists():
        raise RunDirError(
            f"{out} already holds results; results are records and are never replaced: pass "
            "tag=<new name> for another evaluation"
        )
    _check_writable(out)
    return out


def _schema_defaults() -> dict[str, Any]:
    """The schema's default value of every dotted config key."""
    return leaf_paths(OmegaConf.to_container(OmegaConf.structured(Config)))


def config_digest(cfg: DictConfig) -> str:
    """A digest of everything ``cfg`` computes (bookkeeping keys excluded), e.g. to tell
    whether partial results were made by the same evaluation.

    Settings at their schema default are left out, so a setting added to the schema later
    (at its default) keeps the digest of an interrupted run, as it keeps ``run.resume``
    possible; a changed default is caught by the resume check against ``config.yaml``."""
    import hashlib

    defaults = _schema_defaults()
    plain = leaf_paths(_plain(cfg))
    kept = {
        k: v
        for k, v in plain.items()
        if not any(k == p or k.startswith(p + ".") for p in _RESUMABLE_CHANGES)
        and not (k in defaults and defaults[k] == v)
    }
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]
