"""Per-split feature extraction and its on-disk cache, keyed by weights, options and data."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from introspect.gradients.extract import extract_with_outputs

FIELDS = ("grad", "penult", "logits", "labels")


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of every parameter and buffer of ``module`` (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(payload: Mapping[str, Any]) -> str:
    """A stable hex key of a JSON-serializable description."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def compute_features(
    backbone: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    feature_options: Mapping[str, Any],
    device: torch.device | str = "cpu",
    desc: str = "features",
    total: int | None = None,
) -> dict[str, torch.Tensor]:
    """Gradient features, penultimate activations, logits and labels of every batch (on CPU),
    from one forward pass per batch. ``backbone`` must expose its ``head`` module."""
    out: dict[str, list[torch.Tensor]] = {k: [] for k in FIELDS}
    for images, labels in tqdm(batches, desc=desc, total=total, leave=False):
        images = images.to(device, non_blocking=True)
        grad, penult, logits = extract_with_outputs(
            backbone, images, head=backbone.head, **feature_options
        )
        for key, value in zip(FIELDS, (grad, penult, logits, labels), strict=True):
            out[key].append(value.detach().cpu())
    if not out["labels"]:
        raise ValueError(f"{desc}: no batches to extract features from (empty split?)")
    return {k: torch.cat(v) for k, v in out.items()}


class FeatureCache:
    """Feature tensors of one split and recipe, stored atomically as ``<root>/<key>.pt``."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()

    def path(self, key: str) -> Path:
        """Where the entry ``key`` lives."""
        return self.root / f"{key}.pt"

    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        """The stored tensors, or ``None`` when absent or unreadable (then they are recomputed)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # truncated or foreign file: treat as a miss, it will be rewritten
            return None
        if not isinstance(data, dict) or any(k not in data for k in FIELDS):
            return None
        n = len(data["labels"])
        if any(len(data[k]) != n for k in FIELDS):
            return None
        return {k: data[k] for k in FIELDS}

    def save(self, key: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        """Store ``tensors`` under ``key`` with a JSON description beside them."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{key}.", suffix=".tmp")
        os.close(fd)
        try:
            torch.save({k: tensors[k].contiguous() for k in FIELDS}, tmp)
            os.replace(tmp, self.path(key))
        finally:
            Path(tmp).unlink(missing_ok=True)
        text = json.dumps(dict(meta), indent=2, sort_keys=True, default=str)
        (self.root / f"{key}.json").write_text(text + "\n")
