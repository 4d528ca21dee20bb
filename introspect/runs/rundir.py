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


def prepare_run_dir(cfg: DictConfig) -> Path:
    """Create the run directory, fill ``run.name``/``run.dir`` in ``cfg`` and save ``config.yaml``.

    The default name is ``<experiment or 'default'>-<YYYYmmdd-HHMMSS>`` so runs never overwrite
    each other; ``run.dir`` places the run anywhere (results of an earlier run there are removed).
    """
    if not cfg.run.name:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        cfg.run.name = f"{cfg.experiment or 'default'}-{stamp}"
    run_dir = Path(cfg.run.dir) if cfg.run.dir else Path(cfg.run.root) / cfg.run.name
    run_dir = run_dir.expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    # Results of an earlier run in the same directory would not describe this one.
    for stale in ("results.json", "table.md"):
        (run_dir / stale).unlink(missing_ok=True)
    cfg.run.dir = str(run_dir)
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[Logger]:
    """CSV logger in ``<run>/logs`` and, if enabled, a never-prompting W&B logger (offline)."""
    loggers: list[Logger] = []
    if cfg.logger.csv:
        loggers.append(CSVLogger(save_dir=str(run_dir), name="logs", version=""))
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
