"""The processes of a multi-process (DDP) run: starting them, their ranks, and the few
collectives the pipeline needs outside Lightning's loops (no-ops in a single process)."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from lightning.fabric import Fabric
from lightning.fabric.strategies import DDPStrategy
from lightning.pytorch.strategies import DDPStrategy as TrainerDDPStrategy
from lightning.pytorch.strategies import StrategyRegistry
from omegaconf import DictConfig

from introspect.config import ConfigError

T = TypeVar("T")

# Strategies whose processes re-run the launching command (one per device) and keep running
# the whole pipeline; spawn/fork strategies would return nothing of the stages run in them.
_SPAWNING = ("spawn", "fork", "notebook")


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def global_rank() -> int:
    """This process's rank among all processes of the run (0 in a single-process run)."""
    return dist.get_rank() if _initialized() else 0


def world_size() -> int:
    """The number of processes of the run (1 in a single-process run)."""
    return dist.get_world_size() if _initialized() else 1


def is_global_zero() -> bool:
    """Whether this process is rank zero, the only one that writes run files and logs."""
    return global_rank() == 0


def barrier() -> None:
    """Wait until every process of the run reaches this point."""
    if not _initialized():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def broadcast_from_zero(obj: T) -> T:
    """Rank zero's ``obj`` (picklable) on every process."""
    if not _initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def trainer_strategy(cfg: DictConfig) -> str | TrainerDDPStrategy:
    """``cfg.trainer.strategy`` for a ``lightning.Trainer``: in a multi-process run, a ``ddp``
    strategy (what ``auto`` picks there too) that waits at most ``trainer.timeout_s`` for the
    other processes; the name itself otherwise."""
    name = str(cfg.trainer.strategy)
    if world_size() <= 1:
        return name
    if name == "auto":
        options: dict = {}
    elif name in StrategyRegistry and StrategyRegistry[name]["strategy"] is TrainerDDPStrategy:
        options = dict(StrategyRegistry[name]["init_params"])
    else:
        return name
    timeout = datetime.timedelta(seconds=cfg.trainer.timeout_s)
    return TrainerDDPStrategy(timeout=timeout, **options)


def _launch_command() -> str:
    """The module or script that Lightning re-runs to start the other processes."""
    import __main__

    spec = getattr(__main__, "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).name


def launch(cfg: DictConfig) -> None:
    """Start the other processes of a multi-process ``cfg.trainer`` and join its process group.

    ``trainer.devices`` processes per node (times ``trainer.num_nodes``) run the command that
    started this one from its beginning, as Lightning's ``ddp`` strategy does; every later
    ``Trainer`` of the run reuses the processes and their group. Collectives wait at most
    ``trainer.timeout_s`` for the other processes. Does nothing for a
    single-process configuration or when the group exists already (e.g. under ``torchrun``).
    Raises ``ConfigError`` for strategies whose processes would not run the whole pipeline.
    """
    if _initialized():
        return
    t = cfg.trainer
    fabric = Fabric(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=DDPStrategy(timeout=datetime.timedelta(seconds=t.timeout_s)),
    )
    strategy = fabric.strategy
    assert isinstance(strategy, DDPStrategy)
    if len(strategy.parallel_devices or []) * strategy.num_nodes <= 1:
        return
    name = str(t.strategy)
    if not (name == "auto" or name.startswith("ddp")) or any(s in name for s in _SPAWNING):
        raise ConfigError(
            f"trainer.strategy={name!r} cannot run the pipeline on several processes; set "
            "trainer.strategy=ddp (each process runs every stage, so spawned processes would "
            "return nothing of them)"
        )
    command = _launch_command()
    if command.split(".")[0] in ("pytest", "_pytest", "py"):
        raise ConfigError(
            f"a multi-process run re-runs the command that started it, here {command!r} (the "
            "test runner); start it as a subprocess, e.g. python train.py trainer=ddp_cpu"
        )
    fabric.launch()
