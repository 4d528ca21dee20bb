"""Which finished runs are seeds of one experiment, and how an experiment is named: shared by
the comparisons of two-stage runs and of active-learning runs."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from introspect.config.loader import leaf_paths


class CompareError(ValueError):
    """Runs that cannot be compared as asked; the message names the fix."""


@dataclass(frozen=True)
class WandbTarget:
    """Where a comparison is logged to W&B: given by the command line only, never taken from
    the records compared."""

    mode: str = "offline"
    project: str = "introspect"
    entity: str | None = None

    def init_args(self) -> dict[str, Any]:
        """``wandb.init`` arguments (mode, project, entity); outside ``online`` mode, W&B is
        also told through ``WANDB_MODE`` never to prompt for a login."""
        os.environ.setdefault("WANDB_SILENT", "true")
        if self.mode != "online":
            os.environ.setdefault("WANDB_MODE", self.mode)
        return {"mode": self.mode, "project": self.project, "entity": self.entity}


# Config keys that do not change what a run measures: runs differing only in these (and in
# run.seed) are seeds of one experiment.
_IGNORED = (
    "run",
    "logger",
    "scores",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "data.num_workers",
    "data.pin_memory",
    "data.root",
    "data.decode",
    "data.on_device",
    "trainer.channels_last",
    "stage2.cache_dir",
    "eval.cache_dir",
    "eval.batch_size",
    "stage2.extract_batch_size",
    "stage2.shard_batches",
    "active.batch_size",
)


def _drop(config: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node: Any = config
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(leaf, None)


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without the keys that runs of one experiment may differ in."""
    plain = json.loads(json.dumps(config))
    for key in _IGNORED:
        _drop(plain, key)
    return plain


def experiment_key(config: dict[str, Any]) -> str:
    """A digest of ``config`` without the keys that runs of one experiment may differ in."""
    return hashlib.sha256(json.dumps(identity(config), sort_keys=True).encode()).hexdigest()[:12]


def differing_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
    """The dotted keys whose values differ between ``configs`` (ignored keys left out)."""
    leaves = [leaf_paths(identity(c)) for c in configs]
    keys = sorted(set().union(*leaves))
    return [k for k in keys if len({json.dumps(f.get(k)) for f in leaves}) > 1]


def recipe(config: dict[str, Any]) -> str:
    """Stage 2's data recipe in words, e.g. ``train, augmix x2 + clean``."""
    s2 = config.get("stage2", {})
    if not s2.get("enabled", True):
        return "no stage 2"
    where = "+".join(s2.get("splits", ["train"]))
    augment = s2.get("augment", "none")
    if augment == "none":
        return f"{where}, plain"
    extra = " + clean" if s2.get("include_clean") else ""
    return f"{where}, {augment} x{s2.get('passes', 1)}{extra}"


def describe(config: dict[str, Any]) -> str:
    """Row label: backbone (with its checkpoint's file name), stage-1 recipe (unless
    ``custom``), stage-2 recipe and, with an ensemble, its members."""
    b = config.get("backbone", {})
    name = str(b.get("name", "?"))
    ckpt = b.get("checkpoint")
    weights = f" [{Path(str(ckpt)).name}]" if ckpt else ""
    stage1 = config.get("stage1", {}).get("recipe", "custom")
    trained = f" · stage 1 {stage1}" if stage1 != "custom" else ""
    label = f"{name}{weights}{trained} · {recipe(config)}"
    k = int(config.get("stage1", {}).get("ensemble", 1) or 1)
    members = b.get("ensemble_checkpoints") or []
    if k > 1:
        label += f" · ensemble of {k} trained"
    elif members:
        files = ", ".join(Path(str(m.get("checkpoint"))).name for m in members)
        label += f" · ensemble [{files}]"
    return label


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return float(arr.mean()), std
