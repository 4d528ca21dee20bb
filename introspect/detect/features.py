"""Intermediate activations of a backbone, read with forward hooks."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from introspect.backbones.head import forward_with_head_input, resolve_head

PENULTIMATE = "penultimate"
_STAGE = re.compile(r"(^|\.)layer\d+$")


def default_layers(model: nn.Module) -> list[str]:
    """The residual stages of ``model`` (modules named ``layer<k>``, in order) and
    ``"penultimate"`` (the input of its head)."""
    return [name for name, _ in model.named_modules() if _STAGE.search(name)] + [PENULTIMATE]


def layer_features(
    model: nn.Module, images: torch.Tensor, layers: Sequence[str]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(logits, [activation of every layer])`` from one forward pass; ``"penultimate"`` is the
    head's input, other names are submodules whose outputs are taken. Autograd records the pass
    as usual (callers choose ``no_grad``)."""
    modules = dict(model.named_modules())
    unknown = [name for name in layers if name != PENULTIMATE and name not in modules]
    if unknown:
        shown = ", ".join(default_layers(model))
        raise ValueError(f"model has no layer(s) {unknown}; e.g. {shown}")
    captured: dict[str, torch.Tensor] = {}
    handles = [
        modules[name].register_forward_hook(
            lambda _m, _i, out, name=name: captured.__setitem__(name, out)
        )
        for name in layers
        if name != PENULTIMATE
    ]
    try:
        head = resolve_head(model, getattr(model, "head", None), images[:1])
        logits, penultimate = forward_with_head_input(model, head, images)
    finally:
        for handle in handles:
            handle.remove()
    captured[PENULTIMATE] = penultimate
    return logits, [captured[name] for name in layers]


def pooled(activation: torch.Tensor) -> torch.Tensor:
    """``(B, C)``: the mean over spatial positions of a ``(B, C, ...)`` activation (Lee et al.'s
    per-channel feature); a ``(B, D)`` activation is returned as it is."""
    return activation.flatten(2).mean(2) if activation.ndim > 2 else activation
