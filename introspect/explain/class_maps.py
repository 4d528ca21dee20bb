"""Class activation maps: Grad-CAM, Counterfactual-CAM, Contrast-CAM, Grad-CAM++ and CAM.

Each map is ``ReLU(sum_k alpha_k A^k)`` with ``A^k`` the activations of the explained layer
and ``alpha_k = mean_ij ds/dA^k_ij`` for a scalar ``s`` of the logits ``z`` (docs/guides/),
upsampled bilinearly to the input size. The whole batch takes one backward pass of the sum of
the per-sample scalars: this equals per-sample backward passes only because the model runs in
eval mode (BatchNorm uses its running statistics), which the functions switch to and undo.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from introspect.explain.core import (
    ExplanationError,
    MapCall,
    Target,
    check_images,
    explaining,
    grad_input,
    map_method,
    resolve_targets,
    runner_up,
    upsample,
)
from introspect.explain.layers import LayerCapture, resolve_layer

Score = Callable[[torch.Tensor], torch.Tensor]


def class_logit(logits: torch.Tensor, target: Target) -> torch.Tensor:
    """``z_t`` per sample for the classes ``target`` (``None``: the predicted class)."""
    classes = resolve_targets(target, logits)
    return logits.gather(1, classes[:, None])[:, 0]


def contrast_loss(logits: torch.Tensor, target: Target, contrast: Target) -> torch.Tensor:
    """``CE(z, Q)`` per sample; ``contrast=None`` means Q = best class other than the target."""
    if contrast is None:
        classes = runner_up(logits, resolve_targets(target, logits))
    else:
        classes = resolve_targets(contrast, logits)
    return F.cross_entropy(logits, classes, reduction="none")


def layer_gradient(score: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """``d score / d activations`` (the graph is kept for further gradients)."""
    (grad,) = torch.autograd.grad(score, activations, retain_graph=True, allow_unused=True)
    if grad is None:
        raise ExplanationError("the logits do not depend on the explained layer; pick another")
    return grad


def weighted_activations(
    activations: torch.Tensor, grad: torch.Tensor, sign: float = 1.0
) -> torch.Tensor:
    """``ReLU(sum_k sign * alpha_k A^k)`` with ``alpha_k`` the spatial mean of ``grad``."""
    alpha = grad.mean(dim=(2, 3), keepdim=True)
    return F.relu((sign * alpha * activations).sum(dim=1))


def _gradients_of(call: MapCall, score: Score) -> tuple[torch.Tensor, torch.Tensor]:
    """The explained layer's activations (detached) and the gradient of the sum of the
    per-sample scalars ``score(logits)`` with respect to them."""
    check_images(call.images)
    with explaining(call.model), LayerCapture(call.model, call.layer) as capture:
        logits = call.model(grad_input(call.images))
        activations = capture.activations()
        grad = layer_gradient(score(logits).sum(), activations)
    return activations.detach(), grad


def _cam(call: MapCall, score: Score, sign: float) -> torch.Tensor:
    """Unnormalized maps at input resolution for the per-sample scalars ``score(logits)``."""
    maps = weighted_activations(*_gradients_of(call, score), sign)
    return upsample(maps, call.images.shape[-2:])


@map_method
def gradcam(call: MapCall) -> torch.Tensor:
    """Grad-CAM, "why P?": ``s = z_P``, the logit of class ``target`` (default: the prediction).

    Returns ``(B, H, W)`` maps at the input resolution on ``images.device``, min-max
    normalized to ``[0, 1]`` per image (a constant map gives zeros) unless ``normalize=False``.
    ``layer`` is a module of ``model``, its dotted path (also tried under ``model.net``), or
    ``None`` for the last ``nn.Conv2d`` the forward pass executes. ``target`` is one class for
    all images (int), one per image (sequence or ``(B,)`` tensor), or ``None``.
    """
    return _cam(call, lambda z: class_logit(z, call.target), sign=1.0)


@map_method
def counterfactual_cam(call: MapCall) -> torch.Tensor:
    """Counterfactual-CAM, "why not P?" / "what if this region were absent?".

    Grad-CAM with negated weights ``-alpha_k``: the regions whose removal would raise the
    logit of ``target``. Arguments and output as for :func:`gradcam`.
    """
    return _cam(call, lambda z: class_logit(z, call.target), sign=-1.0)


@map_method
def contrast_cam(call: MapCall, *, contrast: Target = None) -> torch.Tensor:
    """Contrast-CAM, "why P, rather than Q?": ``s = CE(z, Q)`` for the class Q ``contrast``.

    ``contrast`` is one class for all images, one per image, or ``None``: the class with the
    highest logit other than ``target``. ``target`` (P, default the prediction) enters only
    through that default, so with ``target=None`` the default Q is the second-highest logit.
    Other arguments and the output as for :func:`gradcam`.
    """
    return _cam(call, lambda z: contrast_loss(z, call.target, contrast), sign=1.0)


@map_method
def gradcam_plus_plus(call: MapCall) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018) for the logit ``z_t`` of class ``target``.

    Channel weights ``w_k = sum_ij a_ij^k ReLU(g_ij^k)`` with ``g = dz_t/dA`` and
    ``a_ij^k = g_ij^2 / (2 g_ij^2 + sum_ab A_ab^k g_ij^3)`` (the paper's closed form for the
    exponential of the score, 0 where the denominator is 0); map ``ReLU(sum_k w_k A^k)``.
    Arguments and output as for :func:`gradcam`.
    """
    acts, grad = _gradients_of(call, lambda z: class_logit(z, call.target))
    squared = grad.pow(2)
    denominator = 2 * squared + acts.sum(dim=(2, 3), keepdim=True) * squared * grad
    nonzero = denominator != 0
    alpha = torch.where(
        nonzero, squared / torch.where(nonzero, denominator, 1.0), torch.zeros_like(grad)
    )
    weights = (alpha * F.relu(grad)).sum(dim=(2, 3), keepdim=True)
    maps = F.relu((weights * acts).sum(dim=1))
    return upsample(maps, call.images.shape[-2:])


# A layer's output whose spatial mean is within this relative distance of the head's input
# counts as the globally pooled feature map.
POOL_TOLERANCE = 1e-4


def _is_pooled(activations: torch.Tensor, head_input: torch.Tensor) -> bool:
    """Whether ``head_input`` ``(B, K)`` is the spatial mean of ``activations`` ``(B, K, h, w)``."""
    if activations.ndim != 4 or head_input.shape != activations.shape[:2]:
        return False
    pooled = activations.mean(dim=(2, 3))
    scale = head_input.abs().max().clamp(min=1e-12)
    return bool(((pooled - head_input).abs().max() / scale) <= POOL_TOLERANCE)


@map_method
def cam(call: MapCall) -> torch.Tensor:
    """CAM (Zhou et al. 2016) for networks whose head is a linear layer on the global average
    pool of a feature map: ``ReLU(sum_k W_tk A^k)`` with ``W`` the head's weight.

    The head is the last ``nn.Linear`` the forward pass runs. ``layer`` is the pooled layer;
    ``None`` finds it (the last executed module whose output's spatial mean is the head's
    input). ``ExplanationError`` if the head's input is not that pool. As ``dz_t/dA^k_ij`` is
    ``W_tk / (h w)`` there, the map equals Grad-CAM of the same layer times ``h w``; the ReLU
    is kept from Grad-CAM so that the two agree. Other arguments and the output as for
    :func:`gradcam`.
    """
    model, images, layer, target = call
    target_module = resolve_layer(model, layer)
    outputs: list[tuple[nn.Module, torch.Tensor]] = []
    linears: list[tuple[nn.Linear, torch.Tensor]] = []

    def record(module: nn.Module, inputs: tuple, output: object) -> None:
        if isinstance(module, nn.Linear) and inputs and isinstance(inputs[0], torch.Tensor):
            linears.append((module, inputs[0].detach()))
        if isinstance(output, torch.Tensor) and output.ndim == 4:
            if target_module is None or module is target_module:
                outputs.append((module, output.detach().clone()))

    watched = [m for m in model.modules() if m is not model or target_module is model]
    with explaining(model), torch.no_grad():
        handles = [m.register_forward_hook(record) for m in watched]
        try:
            logits = model(images.detach())
        finally:
            for handle in handles:
                handle.remove()
        classes = resolve_targets(target, logits)
    if not linears:
        raise ExplanationError("CAM needs a model whose head is an nn.Linear; use gradcam")
    head, head_input = linears[-1]
    if target_module is not None and not outputs:
        raise ExplanationError("the given layer did not run in the forward pass; pick another")
    pooled = [a for _, a in reversed(outputs) if _is_pooled(a, head_input)]
    if not pooled:
        where = "the given layer's output" if target_module is not None else "any feature map"
        raise ExplanationError(
            f"CAM needs the head's input to be the global average pool of a feature map, but it "
            f"is not the pool of {where}; pick the pooled layer (e.g. layer='layer3') or use "
            "gradcam"
        )
    weights = head.weight.detach()[classes]  # (B, K)
    maps = F.relu(torch.einsum("bk,bkhw->bhw", weights, pooled[0]))
    return upsample(maps, images.shape[-2:])
