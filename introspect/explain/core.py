"""What every explanation method shares: input checks, targets, model state, normalization."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from introspect.explain.errors import ExplanationError as ExplanationError  # re-exported

if TYPE_CHECKING:
    from introspect.explain.layers import LayerSpec

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


class MapCall(NamedTuple):
    """The inputs every map method shares: the model, the checked ``(B, C, H, W)`` images, the
    explained layer (ignored by input-space methods) and the target classes."""

    model: nn.Module
    images: torch.Tensor
    layer: LayerSpec
    target: Target


MapMethod = Callable[..., torch.Tensor]


def map_method(compute: Callable[..., torch.Tensor]) -> MapMethod:
    """The public map method of ``compute(call: MapCall, **options)``, which returns
    unnormalized ``(B, H, W)`` maps.

    The method takes ``(model, images, layer=None, target=None, normalize=True, *, **options)``:
    the images are checked before ``compute`` runs, and its maps are detached and min-max
    normalized per image unless ``normalize=False`` (see :func:`finish`).
    """

    def method(
        model: nn.Module,
        images: torch.Tensor,
        layer: LayerSpec = None,
        target: Target = None,
        normalize: bool = True,
        **options: object,
    ) -> torch.Tensor:
        check_images(images)
        return finish(compute(MapCall(model, images, layer, target), **options), normalize)

    shared = list(inspect.signature(method).parameters.values())[:-1]
    extra = list(inspect.signature(compute).parameters.values())[1:]
    method.__signature__ = inspect.signature(method).replace(  # type: ignore[attr-defined]
        parameters=[*shared, *extra]
    )
    return functools.wraps(compute, assigned=("__module__", "__name__", "__qualname__", "__doc__"))(
        method
    )


def check_noise(noise: object, images: torch.Tensor) -> torch.Tensor:
    """``noise`` if it is a ``(samples, B, C, H, W)`` tensor of perturbations of ``images``,
    else ``ExplanationError``."""
    if not isinstance(noise, torch.Tensor) or noise.ndim != 5 or noise.shape[1:] != images.shape:
        shape = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise ExplanationError(
            f"noise must be a (samples, {', '.join(map(str, images.shape))}) tensor, got {shape}"
        )
    return noise


Baseline = float | torch.Tensor | str
BASELINE_NAMES = ("mean", "blur")
# The Gaussian of the "blur" baseline (the blurred image RISE's insertion metric starts from).
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0


def check_positive_int(name: str, value: object) -> int:
    """``value`` if it is a positive ``int`` (not a bool), else ``ExplanationError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ExplanationError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_fraction(name: str, value: object, *, low: float = 0.0, high: float = 1.0) -> float:
    """``value`` as a float if it lies in the open interval ``(low, high)``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not low < value < high:
        raise ExplanationError(f"{name} must be a number in ({low:g}, {high:g}), got {value!r}")
    return float(value)


def blur(images: torch.Tensor) -> torch.Tensor:
    """Each channel of ``(B, C, H, W)`` images blurred by a Gaussian (``BLUR_KERNEL`` taps,
    ``BLUR_SIGMA`` pixels; borders reflected, or replicated for images too small to reflect)."""
    offsets = torch.arange(BLUR_KERNEL, dtype=images.dtype, device=images.device)
    taps = torch.exp(-0.5 * ((offsets - BLUR_KERNEL // 2) / BLUR_SIGMA) ** 2)
    taps = taps / taps.sum()
    channels = images.shape[1]
    pad = BLUR_KERNEL // 2
    mode = "reflect" if min(images.shape[-2:]) > pad else "replicate"
    x = F.pad(images, (pad, pad, pad, pad), mode=mode)
    x = F.conv2d(x, taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def baseline_images(images: torch.Tensor, baseline: Baseline) -> torch.Tensor:
    """The ``(B, C, H, W)`` reference that hidden pixels of ``images`` take.

    ``baseline`` is a number (a constant in the model's input space, e.g. 0.5 for grey on
    ``[0, 1]`` images), a tensor broadcastable to ``(C, H, W)`` or ``(B, C, H, W)``,
    ``"mean"`` (each image's per-channel mean colour) or ``"blur"`` (each image blurred by a
    Gaussian of ``BLUR_SIGMA`` pixels).
    """
    x = images.detach()
    if isinstance(baseline, str):
        if baseline == "mean":
            return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
        if baseline == "blur":
            return blur(x)
        raise ExplanationError(
            f"baseline must be a number, a tensor or one of {', '.join(BASELINE_NAMES)}; "
            f"got {baseline!r}"
        )
    if isinstance(baseline, bool) or not isinstance(baseline, int | float | torch.Tensor):
        raise ExplanationError(
            f"baseline must be a number, a tensor or one of {', '.join(BASELINE_NAMES)}; "
            f"got {type(baseline).__name__}"
        )
    fill = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    try:
        return torch.broadcast_to(fill, x.shape)
    except RuntimeError:
        raise ExplanationError(
            f"a baseline tensor must broadcast to the images {tuple(x.shape)}, got "
            f"{tuple(fill.shape)}"
        ) from None
