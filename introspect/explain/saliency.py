"""Input-space saliency: vanilla gradient, guided backpropagation, deconvnet, Guided Grad-CAM
and occlusion.

The gradient methods return ``max_c |g_c|`` of the input gradient ``g`` of the target logit
(docs/guides/ and the FunML lecture). Guided backpropagation and deconvnet change only how
gradients pass backwards through the ReLUs of the model:

- guided backpropagation: ``dL/dh = [h > 0] [dL/dh' > 0] dL/dh'`` (input ``h``, output ``h'``),
- deconvnet: ``dL/dh = [dL/dh' > 0] dL/dh'`` (the forward mask is ignored).

Limitation: a ReLU is modified when the model calls ``torch.nn.functional.relu`` (so every
``nn.ReLU`` module), ``torch.relu``, ``Tensor.relu`` or their in-place forms, from Python. Other
rectifiers (``clamp(min=0)``, ``relu6``, ``leaky_relu``, ``threshold``) and ReLUs inside
TorchScript, compiled graphs or fused kernels are differentiated normally. A model that runs
no recognized ReLU raises ``ExplanationError``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from introspect.explain.class_maps import class_logit, gradcam
from introspect.explain.core import (
    Baseline,
    ExplanationError,
    MapCall,
    baseline_images,
    check_positive_int,
    explaining,
    grad_input,
    map_method,
    resolve_targets,
)


class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward passes only positive gradients where the input was positive."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return grad.clamp(min=0) * (out > 0)


class _DeconvReLU(torch.autograd.Function):
    """ReLU whose backward is the ReLU of the incoming gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


_RELUS = {torch.nn.functional.relu, torch.relu, torch.Tensor.relu}
_INPLACE_RELUS = {torch.relu_, torch.Tensor.relu_}


class _ReplaceReLU(TorchFunctionMode):
    """Routes every ReLU call made while active through the autograd function ``rule``."""

    def __init__(self, rule: type[torch.autograd.Function]) -> None:
        super().__init__()
        self.rule = rule
        self.calls = 0

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func not in _RELUS and func not in _INPLACE_RELUS:
            return func(*args, **kwargs)
        self.calls += 1
        x = args[0] if args else kwargs["input"]
        out = self.rule.apply(x)
        if func in _INPLACE_RELUS or kwargs.get("inplace", False):
            return x.copy_(out)
        return out


def _saliency(call: MapCall, rule: type[torch.autograd.Function] | None = None) -> torch.Tensor:
    """``max_c |d z_target / d x_c|``, through ReLUs replaced by ``rule`` when given."""
    with explaining(call.model):
        x = grad_input(call.images)
        if rule is None:
            logits = call.model(x)
        else:
            with _ReplaceReLU(rule) as mode:
                logits = call.model(x)
            if mode.calls == 0:
                raise ExplanationError(
                    "the model runs no ReLU (nn.ReLU, F.relu, torch.relu or Tensor.relu), so "
                    "guided backpropagation and deconvnet cannot modify its backward pass"
                )
        (grad,) = torch.autograd.grad(class_logit(logits, call.target).sum(), x)
    return grad.abs().amax(dim=1)


@map_method
def vanilla_gradient(call: MapCall) -> torch.Tensor:
    """Vanilla gradient saliency ``max_c |d z_target / d x_c|`` as ``(B, H, W)`` maps.

    ``layer`` is ignored (the map lives in input space); it is accepted so that every method
    shares one signature. ``target`` and ``normalize`` as for :func:`~introspect.explain.gradcam`.
    """
    return _saliency(call)


@map_method
def guided_backprop(call: MapCall) -> torch.Tensor:
    """Guided backpropagation saliency ``max_c |g_c|``: at every ReLU only positive gradients
    pass, and only where the ReLU's input was positive.

    Guided are the ReLUs the model runs through ``nn.ReLU``, ``F.relu``, ``torch.relu`` or
    ``Tensor.relu`` (functional calls included, in place or not); other rectifiers such as
    ``clamp(min=0)`` are not (see the module docstring). ``ExplanationError`` if the model
    runs none. Arguments and output as for :func:`vanilla_gradient`.
    """
    return _saliency(call, _GuidedReLU)


@map_method
def deconvnet(call: MapCall) -> torch.Tensor:
    """Deconvnet saliency ``max_c |g_c|``: at every ReLU the gradient is rectified, whatever
    the ReLU's input was. The same ReLUs as in :func:`guided_backprop` are affected.
    Arguments and output as for :func:`vanilla_gradient`.
    """
    return _saliency(call, _DeconvReLU)


@map_method
def guided_gradcam(call: MapCall) -> torch.Tensor:
    """Guided Grad-CAM: the guided backpropagation map times the Grad-CAM map, pixel by pixel.

    Both factors are taken unnormalized; the product is then min-max normalized per image
    unless ``normalize=False``. Arguments as for :func:`~introspect.explain.gradcam`.
    """
    guided = guided_backprop(call.model, call.images, target=call.target, normalize=False)
    return guided * gradcam(*call, normalize=False)


def _starts(size: int, patch: int, stride: int) -> torch.Tensor:
    """Patch offsets along one axis, the last one flush with the border so all pixels are hit."""
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return torch.tensor(starts)


def _coverage(starts: torch.Tensor, patch: int, size: int) -> torch.Tensor:
    """``(n, size)`` boolean masks of the pixels each offset's patch covers along one axis."""
    pixels = torch.arange(size)
    return (pixels >= starts[:, None]) & (pixels < starts[:, None] + patch)


@map_method
def occlusion(
    call: MapCall,
    *,
    patch: int = 8,
    stride: int = 4,
    baseline: Baseline = "mean",
    batch_size: int = 64,
) -> torch.Tensor:
    """Occlusion saliency: per pixel, the mean drop of the target class's softmax probability,
    ``p_t(x) - p_t(x with a patch set to baseline)``, over all patches covering the pixel.

    Square ``patch x patch`` patches (clipped to the image) slide with ``stride``; the last
    row and column of patches touch the border, so every pixel is covered. The patch takes the
    ``baseline`` values (see :func:`~introspect.explain.core.baseline_images`): by default each
    image's mean colour, a grey patch as the lecture seed asks (a black one would itself be a
    strong feature); 0.5 gives mid-grey on ``[0, 1]`` images. The occluded images are
    evaluated ``batch_size`` at a time. ``layer`` is ignored (accepted so that every method
    shares one signature); ``target`` and ``normalize`` as for
    :func:`~introspect.explain.gradcam`. Normalized maps are min-max scaled, so the pixel
    with the smallest drop (possibly a rise) maps to 0.
    """
    for name, value in (("patch", patch), ("stride", stride), ("batch_size", batch_size)):
        check_positive_int(name, value)
    model, target, x = call.model, call.target, call.images.detach()
    fill = baseline_images(x, baseline)
    height, width = x.shape[-2:]
    rows = _coverage(_starts(height, min(patch, height), stride), min(patch, height), height)
    cols = _coverage(_starts(width, min(patch, width), stride), min(patch, width), width)
    count = len(rows) * len(cols)
    with explaining(model), torch.no_grad():
        rows, cols = rows.to(x.device), cols.to(x.device)
        heat = torch.zeros(x.shape[0], height, width, dtype=x.dtype, device=x.device)
        logits = model(x)
        classes = resolve_targets(target, logits)
        clean = logits.softmax(dim=1).gather(1, classes[:, None])[:, 0]
        for begin in range(0, x.shape[0] * count, batch_size):
            end = min(begin + batch_size, x.shape[0] * count)
            index = torch.arange(begin, end, device=x.device)
            image, position = index // count, index % count
            masks = rows[position // len(cols), :, None] & cols[position % len(cols), None, :]
            occluded = torch.where(masks[:, None], fill[image], x[image])
            probs = model(occluded).softmax(dim=1).gather(1, classes[image, None])[:, 0]
            heat.index_add_(0, image, (clean[image] - probs)[:, None, None] * masks)
    return heat / (rows.sum(0)[:, None] * cols.sum(0)[None, :])
