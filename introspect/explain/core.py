"""What every explanation method shares: input checks, targets, model state, normalization."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from introspect.explain.errors import ExplanationError as ExplanationError  # re-exported

Target = int | Sequence[int] | torch.Tensor | None

# A map whose range is at most this fraction of its magnitude counts as constant.
CONSTANT_TOLERANCE = 1e-6


def check_images(images: torch.Tensor) -> None:
    """Raise ``ExplanationError`` unless ``images`` is a floating ``(B, C, H, W)`` tensor."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ExplanationError(f"images must be a (B, C, H, W) tensor, got {shape}")
    if not images.is_floating_point():
        raise ExplanationError(f"images must be a floating-point tensor, got {images.dtype}")
    if images.shape[0] == 0:
        raise ExplanationError("images is an empty batch")


@contextmanager
def explaining(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode with autograd enabled (even inside ``torch.inference_mode``).

    Every submodule's train/eval mode is restored on exit, also when an error is raised.
    """
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def grad_input(images: torch.Tensor) -> torch.Tensor:
    """A fresh copy of ``images`` that requires grad (usable even if made in inference mode)."""
    return images.detach().clone().requires_grad_(True)


def resolve_targets(target: Target, logits: torch.Tensor) -> torch.Tensor:
    """The class of every sample as a ``(B,)`` long tensor on ``logits.device``.

    ``target`` is one class for all samples (int), one per sample (sequence or tensor), or
    ``None`` for the predicted class (argmax of the logits).
    """
    if logits.ndim != 2:
        raise ExplanationError(
            f"the model must return (B, num_classes) logits, got shape {tuple(logits.shape)}"
        )
    batch, num_classes = logits.shape
    if target is None:
        return logits.detach().argmax(dim=1)
    classes = torch.as_tensor(target, device=logits.device)
    if classes.is_floating_point() or classes.is_complex() or classes.dtype == torch.bool:
        raise ExplanationError(f"class indices must be integers, got dtype {classes.dtype}")
    classes = classes.long()
    if classes.ndim == 0:
        classes = classes.expand(batch)
    if classes.shape != (batch,):
        raise ExplanationError(
            f"give one class per image: expected shape ({batch},), got {tuple(classes.shape)}"
        )
    if bool(((classes < 0) | (classes >= num_classes)).any()):
        raise ExplanationError(
            f"class indices must lie in [0, {num_classes}), got {classes.tolist()}"
        )
    return classes


def runner_up(logits: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """Per sample, the class with the highest logit other than ``exclude`` (``(B,)`` long)."""
    if logits.shape[1] < 2:
        raise ExplanationError("a contrast class needs a model with at least two classes")
    masked = logits.detach().clone()
    masked[torch.arange(len(masked), device=masked.device), exclude] = float("-inf")
    return masked.argmax(dim=1)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, h, w)`` maps resized bilinearly to ``(B, *size)``."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def minmax_normalize(maps: torch.Tensor) -> torch.Tensor:
    """Each ``(H, W)`` map of ``(B, H, W)`` rescaled to ``[0, 1]``; constant maps become zeros."""
    flat = maps.flatten(1)
    low = flat.min(dim=1).values[:, None, None]
    high = flat.max(dim=1).values[:, None, None]
    span = high - low
    magnitude = torch.maximum(low.abs(), high.abs())
    constant = span <= CONSTANT_TOLERANCE * magnitude
    scaled = (maps - low) / torch.where(constant, torch.ones_like(span), span)
    return torch.where(constant, torch.zeros_like(scaled), scaled)


def finish(maps: torch.Tensor, normalize: bool) -> torch.Tensor:
    """``maps`` detached, min-max normalized per image if ``normalize``."""
    maps = maps.detach()
    return minmax_normalize(maps) if normalize else maps
