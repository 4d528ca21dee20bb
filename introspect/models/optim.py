"""Optimizers and schedules shared by every trainable stage."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import lightning as L
import torch

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "none")


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    optim: Mapping[str, Any],
    trainer: L.Trainer,
    *,
    fused: bool = False,
) -> Any:
    """SGD (momentum, Nesterov) or AdamW, with an optional per-step cosine decay to zero.

    ``fused``: torch's one-kernel update (the same arithmetic, rounded in another order: AdamW's
    weights differ from the per-tensor update in the last bit)."""
    name = optim.get("name", "sgd")
    params = [p for p in params if p.requires_grad]
    implementation = {"fused": True} if fused else {}
    if name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params,
            lr=optim["lr"],
            momentum=optim.get("momentum", 0.9),
            nesterov=optim.get("nesterov", True) and optim.get("momentum", 0.9) > 0,
            weight_decay=optim.get("weight_decay", 0.0),
            **implementation,
        )
    elif name == "adamw":
        opt = torch.optim.AdamW(
            params, lr=optim["lr"], weight_decay=optim.get("weight_decay", 0.0), **implementation
        )
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
