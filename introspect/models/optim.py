"""Optimizers and schedules shared by every trainable stage."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import lightning as L
import torch

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "none")


def build_optimizer(
    params: Iterable[torch.nn.Parameter], optim: Mapping[str, Any], trainer: L.Trainer
) -> Any:
    """SGD (momentum, Nesterov) or AdamW, with an optional per-step cosine decay to zero."""
    name = optim.get("name", "sgd")
    params = [p for p in params if p.requires_grad]
    if name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params,
            lr=optim["lr"],
            momentum=optim.get("momentum", 0.9),
            nesterov=optim.get("nesterov", True) and optim.get("momentum", 0.9) > 0,
            weight_decay=optim.get("weight_decay", 0.0),
        )
    elif name == "adamw":
        opt = torch.optim.AdamW(params, lr=optim["lr"], weight_decay=optim.get("weight_decay", 0.0))
    else:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    schedule = optim.get("schedule", "cosine")
    if schedule == "none":
        return opt
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    total = max(1, int(trainer.estimated_stepping_batches))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
