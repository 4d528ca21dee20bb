"""Stage 1 of a run whose backbone is a ProtoPNet: the ProtoPNet phases instead of plain CE."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import Logger

from introspect.backbones import Backbone
from introspect.data import ImageDataModule
from introspect.models.protopnet import train_protopnet
from introspect.runs.distributed import world_size
from introspect.runs.errors import PipelineError
from introspect.runs.status import stages_done, write_json_atomic
from introspect.runs.trainer import resolve_device
from introspect.stages.options import Stage1Options


def protopnet_stage1(
    options: Stage1Options,
    dm: ImageDataModule,
    backbone: Backbone,
    run_dir: Path,
    loggers: list[Logger],
) -> None:
    """Train ``backbone`` with the phases of ``options.stage1.protopnet`` (or, resuming a run that
    finished stage 1, load its weights); writes ``<run>/protopnet.json`` with the per-phase
    history. A resumed run that stopped during the phases continues after the last phase it
    finished (see ``train_protopnet``)."""

    t = options.trainer
    if world_size() > 1 or t.num_nodes > 1 or t.devices not in (1, "1"):
        raise PipelineError(
            "protopnet stage 1 runs in one process; set trainer.devices=1 and trainer.num_nodes=1"
        )
    best = run_dir / "checkpoints" / "stage1-best.ckpt"
    if options.resume and "stage1" in stages_done(run_dir):
        if not best.is_file():
            raise PipelineError(f"{best} is missing; the run cannot be resumed, only overwritten")
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in state.items()})
        return
    settings = asdict(options.stage1.protopnet)
    device = resolve_device(t.accelerator)
    summary = train_protopnet(
        backbone,
        dm,
        settings,
        run_dir=run_dir,
        loggers=loggers,
        device=device,
        resume=options.resume,
    )
    backbone.cpu()
    write_json_atomic(run_dir / "protopnet.json", _finite(summary))


def _finite(obj: Any) -> Any:
    """``obj`` with NaN/inf floats replaced by ``None`` (strict JSON)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


__all__ = ["protopnet_stage1"]
