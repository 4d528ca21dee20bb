"""Explanations of a quality (regression) model's score ``s`` (one output per image):
Grad-CAM "why q?" (``s`` itself) and Contrast-CAM "why q, rather than q'?" (the squared error
``(s - q')^2`` between the score and a contrast level ``q'``), with the figure of both for
several ``q'``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import nn

from introspect.explain.class_maps import _cam
from introspect.explain.core import ExplanationError, MapCall, check_images, explaining, finish
from introspect.explain.figure import _overlay, _save, display_image
from introspect.explain.layers import LayerSpec


def _score(outputs: torch.Tensor) -> torch.Tensor:
    if outputs.ndim != 2 or outputs.shape[1] != 1:
        raise ExplanationError(
            f"a quality model outputs one score per image (B, 1), got {tuple(outputs.shape)}"
        )
    return outputs[:, 0]


def quality_gradcam(
    model: nn.Module, images: torch.Tensor, layer: LayerSpec = None, normalize: bool = True
) -> torch.Tensor:
    """Grad-CAM of the score, "why q?": ``(B, H, W)`` maps as ``explain.gradcam`` returns."""
    return finish(_cam(MapCall(model, images, layer, None), _score, sign=1.0), normalize)


def quality_contrast_cam(
    model: nn.Module,
    images: torch.Tensor,
    contrast: float | torch.Tensor,
    layer: LayerSpec = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Contrast-CAM for regression, "why q, rather than q'?": Grad-CAM of ``(s - q')^2``.

    ``contrast`` is one level ``q'`` for every image or one per image (``(B,)``), in the units
    of the model's scores. Output as ``quality_gradcam``.
    """
    level = torch.as_tensor(contrast, dtype=images.dtype, device=images.device)

    def loss(outputs: torch.Tensor) -> torch.Tensor:
        return (_score(outputs) - level) ** 2

    return finish(_cam(MapCall(model, images, layer, None), loss, sign=1.0), normalize)


def quality_figure(
    model: nn.Module,
    images: torch.Tensor,
    contrasts: Sequence[float],
    path: str | os.PathLike[str],
    *,
    layer: LayerSpec = None,
    targets: Sequence[float] | None = None,
    label: str = "score",
) -> Path:
    """One row per image: the image with its score q (and ``targets``, its database score),
    Grad-CAM "why q?" and a Contrast-CAM "why q, rather than q'?" for every ``contrasts`` level,
    the Contrast-CAMs of an image on one colour scale (divided by their common maximum).
    ``label`` names the score in the titles (e.g. ``proxy (MS-SSIM)``)."""
    check_images(images)
    if not contrasts:
        raise ExplanationError("give at least one contrast level q'")
    with torch.no_grad(), explaining(model):
        scores = _score(model(images)).tolist()
    why = quality_gradcam(model, images, layer)
    # Raw Contrast-CAMs on one colour scale per image: for a one-score head they differ in
    # magnitude (and sign side) with |q - q'|, which per-map normalization would hide.
    raw = torch.stack([quality_contrast_cam(model, images, q, layer, False) for q in contrasts])
    peak = raw.flatten(2).amax(dim=(0, 2)).clamp_min(1e-12)[None, :, None, None]
    rather = raw / peak
    cols = 2 + len(contrasts)
    fig = Figure(figsize=(2.2 * cols, 2.4 * len(images)))
    axes = fig.subplots(len(images), cols, squeeze=False)
    for i, image in enumerate(images):
        picture = display_image(image)
        title = f"{label}\nq = {scores[i]:.2f}"
        if targets is not None:
            title += f" (target {targets[i]:.2f})"
        axes[i, 0].imshow(picture, cmap="gray" if picture.ndim == 2 else None)
        axes[i, 0].set_title(title, fontsize=8)
        _overlay(axes[i, 1], picture, why[i], f"why {scores[i]:.2f}?")
        for j, q in enumerate(contrasts):
            _overlay(
                axes[i, 2 + j], picture, rather[j][i], f"why {scores[i]:.2f},\nrather than {q:.2f}?"
            )
        for ax in axes[i]:
            ax.axis("off")
    return _save(fig, path)
