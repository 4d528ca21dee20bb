"""Run directories: where a run goes, the checks made before any work, creation, loggers.

A directory holds one run. Starting a run where one exists is refused unless ``run.overwrite``
(the files a run writes are deleted first) or ``run.resume`` (the run there is continued; its
saved config must agree with the new one). Overwrite deletes only a run of ours and refuses a
folder holding anything else; home, root and the working directory (or its ancestors) are never
run directories; every output folder of a run must lie inside it (no symlinks out). This module
imports neither torch nor Lightning at import time, so the checks run before the heavy imports.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from introspect.config import ConfigError
from introspect.config.loader import first_interpolation, leaf_paths
from introspect.config.schema import Config, LoggerConfig
from introspect.runs.lock import LOCK_FILE, RunLock, acquire_lock
from introspect.runs.options import RunOptions, with_run
from introspect.runs.status import (
    STATES,
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
    "check_inside",
    "evaluation_dir",
    "evaluation_tag",
    "holds_run",
    "is_record",
    "lock_evaluation",
    "lock_run_dir",
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


# What a run writes at the top of its directory (folders end in "/"): all that
# ``run.overwrite`` deletes. Anything else there makes overwrite refuse.
RUN_ENTRIES = (
    "config.yaml",
    STATUS_FILE,
    "results.json",
    "predictions.npz",
    "table.md",
    "provenance.json",
    "protopnet.json",
    "active.json",
    "active.md",
    "active.png",
    "scatter.png",
    "explanations.png",
    "prototypes.png",
    "reliability_clean.png",
    "reliability_corrupted.png",
    LOCK_FILE,
    "checkpoints/",
    "stage2/",
    "logs/",
    "wandb/",
    "evaluations/",
    "explanations/",
    "active_rounds/",
    ".partial-evaluation/",
)
# Records: never replaced by any command (files of a run, or folders whose files all are).
RECORD_FILES = ("results.json", "config.yaml", STATUS_FILE, "provenance.json")
RECORD_FOLDERS = ("checkpoints", "stage2")


class RunDirError(ConfigError):
    """A run directory that cannot be used as asked; the message names the fix."""


def _entry_names() -> set[str]:
    return {e.rstrip("/") for e in RUN_ENTRIES}


def _is_write_temp(name: str) -> bool:
    """A temporary file of an atomic write a killed process left behind (``.<name>.*.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")


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


def run_path(run: RunOptions) -> Path:
    """The absolute run directory of ``run``: ``dir`` or ``root/name`` (a run without a name
    gets the default one of ``RunOptions.named``, now).

    ``RunDirError`` when the name is not one plain folder name."""
    name = str(run.named().name)
    if name in (".", "..") or "/" in name or "\\" in name or name.strip() != name:
        raise RunDirError(
            f"run.name={name!r} must be one plain folder name (no '/', not '.' or '..'); "
            "give the folder as run.dir=PATH or the parent as run.root=PATH"
        )
    run_dir = Path(run.dir) if run.dir else Path(run.root) / name
    return run_dir.expanduser().resolve()


def _refuse_special(path: Path) -> None:
    """``RunDirError`` for the file system root, the home folder, and the working directory
    or any folder holding it: never run directories, whatever they contain."""
    home = Path.home().resolve()
    cwd = Path.cwd().resolve()
    if path == Path(path.anchor) or path == home or path == cwd or path in cwd.parents:
        what = "your home folder" if path == home else "the working directory or a folder above it"
        if path == Path(path.anchor):
            what = "the file system root"
        raise RunDirError(
            f"run directory {path} is {what}; a run needs its own folder: set run.dir or "
            "run.name to a new folder"
        )


def _ours(path: Path) -> bool:
    """Whether ``path`` holds a run written by this program: a ``status.json`` in our format
    or a ``config.yaml`` whose sections are all config sections of ours."""
    status = read_status(path)
    if status is not None and status.get("state") in STATES:
        return True
    try:
        saved = OmegaConf.to_container(OmegaConf.load(path / "config.yaml"))
    except Exception:  # missing or not YAML: not a config of ours
        return False
    sections = {f for f in Config.__dataclass_fields__}
    return isinstance(saved, dict) and bool(saved) and set(saved) <= sections


def _check_overwrite(path: Path) -> None:
    """``RunDirError`` unless everything in ``path`` is a file or folder a run writes, in a
    directory that holds a run of ours (or is empty, or does not exist)."""
    entries = [p.name for p in path.iterdir() if p.name != LOCK_FILE] if path.is_dir() else []
    if not entries:
        return
    names = _entry_names()
    unknown = sorted(n for n in entries if n not in names and not _is_write_temp(n))
    if not _ours(path):
        raise RunDirError(
            f"run.overwrite=true but {path} holds no run of this program (no status.json or "
            "config.yaml of ours); overwrite deletes runs only: choose another run.dir/run.name"
        )
    if unknown:
        shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise RunDirError(
            f"run.overwrite=true but {path} holds files no run writes ({shown}); move them "
            "away or choose another run.dir/run.name (overwrite deletes only a run's own files)"
        )


def _clear_run(path: Path) -> None:
    """Delete what a run writes in ``path`` (links themselves, never what they point to);
    the lock file of this process stays."""
    names = _entry_names() - {LOCK_FILE}
    for entry in path.iterdir():
        if entry.name not in names and not _is_write_temp(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def is_record(path: Path) -> bool:
    """Whether ``path`` is (or would replace) a record of a run: its ``results.json``,
    ``config.yaml``, ``status.json`` or ``provenance.json`` (an evaluation's too), or anything
    in a run's ``checkpoints/`` or ``stage2/``."""
    path = path.expanduser().resolve()
    if path.name in RECORD_FILES:
        return True
    return any(
        folder.name in RECORD_FOLDERS and holds_run(folder.parent) for folder in path.parents
    )


def check_inside(run_dir: Path, *paths: Path) -> None:
    """``RunDirError`` when one of ``paths`` (output files or folders of the run in ``run_dir``,
    existing or not) is a symbolic link or resolves outside ``run_dir``."""
    root = run_dir.resolve()
    for path in paths:
        here = path
        while here != run_dir and run_dir in here.parents:
            if here.is_symlink():
                raise RunDirError(
                    f"{here} is a symbolic link; a command writes only inside its run "
                    f"({run_dir}): replace the link by a folder"
                )
            here = here.parent
        resolved = path.resolve()
        if resolved != root and root not in resolved.parents:
            raise RunDirError(
                f"{path} resolves to {resolved}, outside the run {run_dir}; a command writes "
                "only inside its run"
            )


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


def check_run_dir(run: RunOptions, config: dict[str, Any]) -> Path:
    """The checks made before any work, for the run ``run`` of the plain resolved ``config``
    (name it first with ``RunOptions.named``); returns the run directory.

    Refuses a directory that holds a run unless ``run.overwrite`` or ``run.resume``; with
    ``run.overwrite``, the directory must hold a run of ours and nothing else; with
    ``run.resume``, a run must be there, unfinished, made with the same config; the directory
    must be creatable and writable, not home, root or the working directory (or above it), and
    its output folders no symbolic links. Processes of rank > 0 only compute the path.
    """
    path = run_path(run)
    if run.overwrite and run.resume:
        raise RunDirError("run.overwrite=true and run.resume=true exclude each other; pick one")
    if is_secondary_process():
        return path
    _refuse_special(path)
    _check_writable(path)
    if path.is_dir():
        check_inside(path, *(path / e.rstrip("/") for e in RUN_ENTRIES))
    if run.overwrite:
        _check_overwrite(path)
    if run.resume:
        _check_resume(path, config)
    elif holds_run(path) and not run.overwrite:
        raise RunDirError(
            f"{path} already holds a run ({_state(path)}); a directory holds one run: choose "
            "another run.name/run.dir, continue it with run.resume=true, or replace it with "
            "run.overwrite=true"
        )
    return path


def _check_resume(path: Path, config: dict[str, Any]) -> None:
    """``RunDirError`` unless ``path`` holds an unfinished run made with ``config``."""
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
    assert isinstance(saved, dict)
    changed = _changed_keys(saved, config)
    if changed:
        current = leaf_paths(config)
        shown = ", ".join(
            f"{k} ({OmegaConf.select(OmegaConf.create(saved), k)!r} -> {current.get(k)!r})"
            for k in changed[:5]
        )
        raise RunDirError(
            f"run.resume=true but the config differs from the run in {path}: {shown}; "
            "resume with the run's own settings, or start a new run"
        )


def _state(path: Path) -> str:
    status = read_status(path)
    return str(status.get("state", "unknown state")) if status else "no status.json"


def prepare_run_dir(run: RunOptions, config: dict[str, Any]) -> tuple[RunOptions, dict[str, Any]]:
    """Create the run directory of ``run`` (a run's files deleted first with ``overwrite``),
    save ``config`` there as ``config.yaml`` and mark the run ``running``; return ``run`` and
    ``config`` with the run's name and directory filled in.

    In a multi-process run, rank zero picks name and path for every process and alone writes.
    """
    from introspect.runs.distributed import (
        barrier,
        broadcast_from_zero,
        is_global_zero,
        watch_run_dir,
    )

    named = run.named()
    name, where = broadcast_from_zero((named.name, str(run_path(named))))
    run = run.placed(name, where)
    config = with_run(config, run)
    run_dir = Path(where)
    watch_run_dir(run_dir)
    if is_global_zero():
        if run.overwrite and run_dir.is_dir():
            _clear_run(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        previous = read_status(run_dir) if run.resume else None
        if not run.resume:
            save_plain_config(config, run_dir / "config.yaml")
        resumes = (previous or {}).get("resumes", []) + ([now()] if run.resume else [])
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
    return run, config


def save_plain_config(config: dict[str, Any], path: Path) -> None:
    """Write the plain resolved ``config`` as YAML (its strings as they are)."""
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(config)))


def log_version(run_dir: Path, *, resume: bool) -> str:
    """The CSV log folder of this process's part of the run in ``run_dir``: ``""`` for a fresh
    run, ``resume-K`` for its K-th resumption (``resume``; earlier logs are kept)."""
    if not resume:
        return ""
    k = 1
    while (run_dir / "logs" / f"resume-{k}").exists():
        k += 1
    return f"resume-{k}"


def build_loggers(
    settings: LoggerConfig,
    run_dir: Path,
    *,
    name: str,
    config: dict[str, Any],
    csv_version: str = "",
) -> list[Logger]:
    """CSV logger in ``<run>/logs/<csv_version>`` and, if ``settings.wandb``, a never-prompting
    W&B logger (offline) of the run ``name`` with ``config``; none on processes other than rank
    zero (Lightning reduces their metrics to it).

    A CSV logger replaces the ``metrics.csv`` of its folder, so every job logs under its own
    ``csv_version`` (re-evaluations under their own folder, resumed runs as ``resume-K``).
    """
    from lightning.pytorch.loggers import WandbLogger

    from introspect.runs.csvlog import LongCSVLogger
    from introspect.runs.distributed import is_global_zero

    loggers: list[Logger] = []
    if not is_global_zero():
        return loggers
    if settings.csv:
        loggers.append(LongCSVLogger(save_dir=str(run_dir), name="logs", version=csv_version))
    if settings.wandb:
        os.environ.setdefault("WANDB_SILENT", "true")
        if settings.wandb_mode != "online":
            # Never prompt for a login: offline and disabled runs need no account.
            os.environ.setdefault("WANDB_MODE", settings.wandb_mode)
        loggers.append(
            WandbLogger(
                name=name,
                save_dir=str(run_dir),
                project=settings.project,
                entity=settings.entity,
                tags=list(settings.tags),
                mode=settings.wandb_mode,
                config=config,
            )
        )
    return loggers


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
    """``<run>/evaluations/<tag>``, checked before any work: the run must be complete, the
    folder must not hold results already (a results file is a record, never replaced), and
    neither it nor ``evaluations`` nor anything in it may be a link or lead out of the run."""
    if not tag or tag in (".", "..") or "/" in tag or "\\" in tag:
        raise RunDirError(f"tag={tag!r} must be a plain folder name (no '/')")
    status = read_status(run_dir)
    if status is not None and status.get("state") != "complete":
        raise RunDirError(f"the run in {run_dir} is not complete ({describe(status)})")
    out = run_dir / "evaluations" / tag
    check_inside(run_dir, out)
    if out.is_dir():
        check_inside(run_dir, *out.iterdir())
    if (out / "results.json").exists():
        raise RunDirError(
            f"{out} already holds results; results are records and are never replaced: pass "
            "tag=<new name> for another evaluation"
        )
    _check_writable(out)
    return out


def lock_evaluation(run_dir: Path, out_dir: Path) -> RunLock:
    """Lock the evaluation folder ``out_dir`` of the run in ``run_dir`` for this process
    (``LockError`` naming the holder when another has it), then check again that it holds
    no results (another process may have finished it meanwhile)."""
    lock = acquire_lock(out_dir, f"evaluation folder {out_dir}")
    try:
        evaluation_dir(run_dir, out_dir.name)
    except BaseException:
        lock.release()
        raise
    return lock


def lock_run_dir(run: RunOptions, config: dict[str, Any]) -> RunLock | None:
    """Lock the run directory of ``run`` for the whole run (``LockError`` naming the holder
    when another process has it), then repeat ``check_run_dir`` under the lock. Processes of
    rank > 0 take no lock (rank zero holds it for them): None."""
    path = check_run_dir(run, config)
    if is_secondary_process():
        return None
    lock = acquire_lock(path, f"run directory {path}")
    try:
        check_run_dir(run, config)
    except BaseException:
        lock.release()
        raise
    return lock


def _schema_defaults() -> dict[str, Any]:
    """The schema's default value of every dotted config key."""
    return leaf_paths(OmegaConf.to_container(OmegaConf.structured(Config)))


def config_digest(config: dict[str, Any]) -> str:
    """A digest of everything the plain resolved ``config`` computes (bookkeeping keys
    excluded), e.g. to tell whether partial results were made by the same evaluation.

    Settings at their schema default are left out, so a setting added to the schema later
    (at its default) keeps the digest of an interrupted run, as it keeps ``run.resume``
    possible; a changed default is caught by the resume check against ``config.yaml``."""
    import hashlib

    defaults = _schema_defaults()
    plain = leaf_paths(config)
    kept = {
        k: v
        for k, v in plain.items()
        if not any(k == p or k.startswith(p + ".") for p in _RESUMABLE_CHANGES)
        and not (k in defaults and defaults[k] == v)
    }
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]
