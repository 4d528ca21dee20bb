"""Run directories, loggers and atomic result files."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from omegaconf import DictConfig

from introspect.config import save_config
from introspect.runs.distributed import barrier, broadcast_from_zero, is_global_zero


def prepare_run_dir(cfg: DictConfig) -> Path:
    """Create the run directory, fill ``run.name``/``run.dir`` in ``cfg`` and save ``config.yaml``.

    The default name is ``<experiment or 'default'>-<YYYYmmdd-HHMMSS>`` so runs never overwrite
    each other; ``run.dir`` places the run anywhere (results of an earlier run there are removed).
    In a multi-process run, rank zero picks name and path for every process and alone writes.
    """
    name = cfg.run.name or f"{cfg.experiment or 'default'}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.run.dir) if cfg.run.dir else Path(cfg.run.root) / name
    name, path = broadcast_from_zero((name, str(run_dir.expanduser().resolve())))
    cfg.run.name, cfg.run.dir = name, path
    run_dir = Path(path)
    if is_global_zero():
        run_dir.mkdir(parents=True, exist_ok=True)
        # Results of an earlier run in the same directory would not describe this one.
        for stale in ("results.json", "table.md"):
            (run_dir / stale).unlink(missing_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    barrier()
    return run_dir


def build_loggers(cfg: DictConfig, run_dir: Path, *, csv_version: str = "") -> list[Logger]:
    """CSV logger in ``<run>/logs/<csv_version>`` and, if enabled, a never-prompting W&B logger
    (offline); none on processes other than rank zero (Lightning reduces their metrics to it).

    A CSV logger replaces the ``metrics.csv`` of its folder, so later jobs on a finished run
    (re-evaluation, scores) log under their own ``csv_version`` and keep the training log.
    """
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
    from omegaconf import OmegaConf

    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return out


def write_json_atomic(path: Path | str, obj: Any) -> None:
    """Write ``obj`` as JSON so that readers see either the old file or the complete new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
