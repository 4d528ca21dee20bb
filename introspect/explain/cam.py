"""Gradient-weighted class activation maps: Grad-CAM, Counterfactual-CAM and Contrast-CAM.

Each map is ``ReLU(sum_k alpha_k A^k)`` with ``A^k`` the activations of the explained layer
and ``alpha_k = mean_ij ds/dA^k_ij`` for a scalar ``s`` of the logits ``z`` (METHOD.md §2),
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
    Target,
    check_images,
    explaining,
    finish,
    grad_input,
    resolve_targets,
    runner_up,
    upsample,
)
from introspect.explain.layers import LayerCapture, LayerSpec

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


def _cam(
    model: nn.Module, images: torch.Tensor, layer: LayerSpec, score: Score, sign: float
) -> torch.Tensor:
    """Unnormalized maps at input resolution for the per-sample scalars ``score(logits)``."""
    check_images(images)
    with explaining(model), LayerCapture(model, layer) as capture:
        logits = model(grad_input(images))
        activations = capture.activations()
        grad = layer_gradient(score(logits).sum(), activations)
        maps = weighted_activations(activations.detach(), grad, sign)
    return upsample(maps, images.shape[-2:])


def gradcam(
    model: nn.Module,
    images: torch.Tensor,
    layer: LayerSpec = None,
    target: Target = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Grad-CAM, "why P?": ``s = z_P``, the logit of class ``target`` (default: the prediction).

    Returns ``(B, H, W)`` maps at the input resolution on ``images.device``, min-max
    normalized to ``[0, 1]`` per image (a constant map gives zeros) unless ``normalize=False``.
    ``layer`` is a module of ``model``, its dotted path (also tried under ``model.net``), or
    ``None`` for the last ``nn.Conv2d`` the forward pass executes. ``target`` is one class for
    all images (int), one per image (sequence or ``(B,)`` tensor), or ``None``.
    """
    maps = _cam(model, images, layer, lambda z: class_logit(z, target), sign=1.0)
    return finish(maps, normalize)


def counterfactual_cam(
    model: nn.Module,
    images: torch.Tensor,
    layer: LayerSpec = None,
    target: Target = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Counterfactual-CAM, "why not P?" / "what if this region were absent?".

    Grad-CAM with negated weights ``-alpha_k``: the regions whose removal would raise the
    logit of ``target``. Arguments and output as for :func:`gradcam`.
    """
    maps = _cam(model, images, layer, lambda z: class_logit(z, target), sign=-1.0)
    return finish(maps, normalize)


def contrast_cam(
    model: nn.Module,
    images: torch.Tensor,
    layer: LayerSpec = None,
    target: Target = None,
    normalize: bool = True,
    *,
    contrast: Target = None,
) -> torch.Tensor:
    """Contrast-CAM, "why P, rather than Q?": ``s = CE(z, Q)`` for the class Q ``contrast``.

    ``contrast`` is one class for all images, one per image, or ``None``: the class with the
    highest logit other than ``target``. ``target`` (P, default the prediction) enters only
    through that default, so with ``target=None`` the default Q is the second-highest logit.
    Other arguments and the output as for :func:`gradcam`.
    """
    maps = _cam(model, images, layer, lambda z: contrast_loss(z, target, contrast), sign=1.0)
    return finish(maps, normalize)
