"""VOICE: the variance of contrastive explanations as the uncertainty of an explanation."""

from __future__ import annotations

from collections.abc import Iterable
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
    classes Q != P (at most 1/4); ``explanation`` ``(B, H, W)``: the normalized Grad-CAM of P;
    ``iou`` ``(B,)``: IoU of ``minmax(uncertainty) > threshold`` with ``explanation >
    threshold``; ``snr`` ``(B,)``: ``mean(uncertainty) / std(uncertainty)`` per image.
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
    min-max normalized Contrast-CAMs "why P, rather than Q?" (docs/guides/); ``explanation``
    is the normalized Grad-CAM "why P?". The threshold (in ``[0, 1)``) is applied to both maps
    on the same scale: the explanation as it is, the uncertainty min-max normalized per image
    (a raw variance never exceeds 1/4, so a raw threshold would depend on the number of
    classes and rarely be crossed). ``iou`` is 0 when neither map exceeds ``threshold``
    anywhere, ``snr`` (of the raw variance; invariant to its scale) is 0 for a constant
    uncertainty map (std 0). ``layer`` and ``target`` as for
    :func:`~introspect.explain.gradcam`; all maps come from one forward pass and N + 1
    gradients. Results are on ``images.device``.
    """
    check_images(images)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise ExplanationError(f"threshold must be a number in [0, 1), got {threshold!r}")
    if not 0 <= threshold < 1:
        raise ExplanationError(f"threshold must be a number in [0, 1), got {threshold!r}")
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
    high_u, high_e = minmax_normalize(uncertainty) > threshold, explanation > threshold
    inter = (high_u & high_e).flatten(1).sum(1).float()
    union = (high_u | high_e).flatten(1).sum(1).float()
    iou = inter / union.clamp(min=1)  # an empty union has an empty intersection: IoU 0
    flat = uncertainty.flatten(1)
    spread = flat.std(dim=1, correction=0)
    ratio = flat.mean(dim=1) / torch.where(spread > 0, spread, torch.ones_like(spread))
    snr = torch.where(spread > 0, ratio, torch.zeros_like(spread))
    return VoiceResult(uncertainty, explanation, iou, snr)


class VoiceEvaluation(NamedTuple):
    """Per-image VOICE scores of a dataset: ``iou``, ``snr``, ``correct`` (prediction equals
    the label), ``predicted`` and ``labels``, all ``(n,)`` on the CPU."""

    iou: torch.Tensor
    snr: torch.Tensor
    correct: torch.Tensor
    predicted: torch.Tensor
    labels: torch.Tensor

    def summary(self) -> dict[str, dict[str, float | int]]:
        """``{"correct"|"incorrect"|"all": {"images", "mean_iou", "std_iou", "mean_snr",
        "std_snr"}}`` (means of an empty group are NaN)."""
        out: dict[str, dict[str, float | int]] = {}
        for group, keep in (
            ("correct", self.correct),
            ("incorrect", ~self.correct),
            ("all", torch.ones_like(self.correct)),
        ):
            iou, snr = self.iou[keep].double(), self.snr[keep].double()
            n = int(keep.sum())
            out[group] = {
                "images": n,
                "mean_iou": float(iou.mean()) if n else float("nan"),
                "std_iou": float(iou.std(correction=0)) if n else float("nan"),
                "mean_snr": float(snr.mean()) if n else float("nan"),
                "std_snr": float(snr.std(correction=0)) if n else float("nan"),
            }
        return out


def evaluate_voice(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor] | list[torch.Tensor]],
    layer: LayerSpec = None,
    *,
    threshold: float = 0.1,
    device: torch.device | str | None = None,
) -> VoiceEvaluation:
    """VOICE IoU and SNR of every image of ``batches`` (``(images, labels)`` pairs) for the
    predicted class, with whether the prediction is correct (see :func:`voice`)."""
    parts: dict[str, list[torch.Tensor]] = {"iou": [], "snr": [], "predicted": [], "labels": []}
    for images, labels, *_ in batches:
        if device is not None:
            images = images.to(device)
        result = voice(model, images, layer, threshold=threshold)
        with explaining(model), torch.no_grad():
            predicted = model(images.detach()).argmax(dim=1)
        parts["iou"].append(result.iou.cpu())
        parts["snr"].append(result.snr.cpu())
        parts["predicted"].append(predicted.cpu())
        parts["labels"].append(torch.as_tensor(labels).cpu().long())
    if not parts["iou"]:
        raise ExplanationError("no images to evaluate")
    cat = {key: torch.cat(values) for key, values in parts.items()}
    correct = cat["predicted"] == cat["labels"]
    return VoiceEvaluation(cat["iou"], cat["snr"], correct, cat["predicted"], cat["labels"])
