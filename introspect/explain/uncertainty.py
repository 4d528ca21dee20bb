"""VOICE: the variance of contrastive explanations as the uncertainty of an explanation."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from introspect.explain.class_maps import (
    class_logit,
    contrast_loss,
    layer_gradient,
    weighted_activations,
)
from introspect.explain.core import (
    ExplanationError,
    Target,
    check_images,
    explaining,
    grad_input,
    minmax_normalize,
    resolve_targets,
    upsample,
)
from introspect.explain.layers import LayerCapture, LayerSpec


class VoiceResult(NamedTuple):
    """VOICE maps and scores of a batch.

    ``uncertainty`` ``(B, H, W)``: per-pixel variance of the normalized Contrast-CAMs of all
    classes Q != P; ``explanation`` ``(B, H, W)``: the normalized Grad-CAM of P; ``iou``
    ``(B,)``: IoU of ``uncertainty > threshold`` with ``explanation > threshold``; ``snr``
    ``(B,)``: ``mean(uncertainty) / std(uncertainty)`` per image.
    """

    uncertainty: torch.Tensor
    explanation: torch.Tensor
    iou: torch.Tensor
    snr: torch.Tensor


def voice(
    model: nn.Module,
    images: torch.Tensor,
    layer: LayerSpec = None,
    target: Target = None,
    *,
    threshold: float = 0.1,
) -> VoiceResult:
    """VOICE uncertainty of the explanation of class P = ``target`` (default: the prediction).

    ``uncertainty`` is the population variance (over the N - 1 classes Q != P) of the
    min-max normalized Contrast-CAMs "why P, rather than Q?" (METHOD.md §2); ``explanation``
    is the normalized Grad-CAM "why P?". ``iou`` is 0 when neither map exceeds ``threshold``
    anywhere, ``snr`` is 0 for a constant uncertainty map (std 0). ``layer`` and ``target`` as
    for :func:`~introspect.explain.gradcam`; all maps come from one forward pass and N + 1
    gradients. Results are on ``images.device``.
    """
    check_images(images)
    size = images.shape[-2:]
    with explaining(model), LayerCapture(model, layer) as capture:
        logits = model(grad_input(images))
        activations = capture.activations()
        num_classes = logits.shape[1]
        if num_classes < 2:
            raise ExplanationError("VOICE needs a model with at least two classes")
        predicted = resolve_targets(target, logits)

        def normalized_cam(score: torch.Tensor) -> torch.Tensor:
            grad = layer_gradient(score.sum(), activations)
            maps = weighted_activations(activations.detach(), grad)
            return minmax_normalize(upsample(maps, size))

        explanation = normalized_cam(class_logit(logits, predicted))
        # Welford's running mean and sum of squared deviations over the classes Q != P.
        seen = torch.zeros(len(images), 1, 1, device=explanation.device)
        mean = torch.zeros_like(explanation)
        squares = torch.zeros_like(explanation)
        for q in range(num_classes):
            cam = normalized_cam(contrast_loss(logits, predicted, torch.full_like(predicted, q)))
            keep = (predicted != q)[:, None, None]
            seen += keep
            delta = (cam - mean) * keep
            mean += delta / seen.clamp(min=1)
            squares += delta * (cam - mean)
    uncertainty = squares / (num_classes - 1)
    high_u, high_e = uncertainty > threshold, explanation > threshold
    inter = (high_u & high_e).flatten(1).sum(1).float()
    union = (high_u | high_e).flatten(1).sum(1).float()
    iou = inter / union.clamp(min=1)  # an empty union has an empty intersection: IoU 0
    flat = uncertainty.flatten(1)
    spread = flat.std(dim=1, correction=0)
    ratio = flat.mean(dim=1) / torch.where(spread > 0, spread, torch.ones_like(spread))
    snr = torch.where(spread > 0, ratio, torch.zeros_like(spread))
    return VoiceResult(uncertainty, explanation, iou, snr)
