"""A PNG grid of the explanatory paradigms: why P? why P, rather than Q? why not P?"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from introspect.explain.class_maps import contrast_cam, counterfactual_cam, gradcam
from introspect.explain.core import ExplanationError, check_images, explaining
from introspect.explain.layers import LayerSpec


def _display_image(image: torch.Tensor) -> np.ndarray:
    """A ``(C, H, W)`` image as an ``(H, W, 3)`` or ``(H, W)`` array in ``[0, 1]``.

    Images already in ``[0, 1]`` are shown as they are, others min-max scaled; images with
    other than three channels are shown as the gray mean of their channels.
    """
    image = image.detach().float().cpu()
    if image.shape[0] != 3:
        image = image.mean(dim=0, keepdim=True)
    low, high = float(image.min()), float(image.max())
    if low < 0 or high > 1:
        image = (image - low) / (high - low) if high > low else torch.zeros_like(image)
    array = image.permute(1, 2, 0).numpy()
    return array if array.shape[-1] == 3 else array[..., 0]


def explanation_figure(
    model: nn.Module,
    images: torch.Tensor,
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    layer: LayerSpec = None,
    contrasts: int = 2,
    labels: Sequence[int] | torch.Tensor | None = None,
) -> Path:
    """Write a PNG explaining the model's prediction P on each image and return its path.

    One row per image; columns: the input (titled with P, its probability and, when
    ``labels`` are given, the true class), Grad-CAM "why P?", Contrast-CAM "why P, rather
    than Q?" for the ``contrasts`` next most likely classes Q (at most N - 1), and
    Counterfactual-CAM "why not P?", each overlaid on the image. ``class_names`` holds at
    least one name per class; ``layer`` is the explained layer as for
    :func:`~introspect.explain.gradcam`. Parent folders of ``path`` are created.
    """
    check_images(images)
    if isinstance(contrasts, bool) or not isinstance(contrasts, int) or contrasts < 0:
        raise ExplanationError(f"contrasts must be a non-negative integer, got {contrasts!r}")
    with explaining(model), torch.no_grad():
        probs = model(images.detach()).softmax(dim=1).cpu()
    if len(class_names) < probs.shape[1]:
        raise ExplanationError(
            f"the model has {probs.shape[1]} classes but only {len(class_names)} class names "
            "were given"
        )
    if labels is not None and len(labels) != len(images):
        raise ExplanationError(f"give one label per image: {len(labels)} for {len(images)}")
    ranking = probs.argsort(dim=1, descending=True)
    predicted = ranking[:, 0]
    name = [[str(class_names[int(c)]) for c in row] for row in ranking]

    why = [f"why {n[0]}?" for n in name]
    columns = [(why, gradcam(model, images, layer, predicted))]
    for k in range(1, min(contrasts, probs.shape[1] - 1) + 1):
        why_rather = [f"why {n[0]},\nrather than {n[k]}?" for n in name]
        columns.append(
            (why_rather, contrast_cam(model, images, layer, predicted, contrast=ranking[:, k]))
        )
    why_not = [f"why not {n[0]}?" for n in name]
    columns.append((why_not, counterfactual_cam(model, images, layer, predicted)))

    rows, cols = len(images), len(columns) + 1
    fig = Figure(figsize=(2.2 * cols, 2.5 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i in range(rows):
        picture = _display_image(images[i])
        gray = "gray" if picture.ndim == 2 else None
        title = f"P = {name[i][0]} ({float(probs[i, predicted[i]]):.0%})"
        if labels is not None:
            title += f"\ntrue: {class_names[int(labels[i])]}"
        axes[i, 0].imshow(picture, cmap=gray)
        axes[i, 0].set_title(title, fontsize=8)
        for j, (titles, maps) in enumerate(columns, start=1):
            axes[i, j].imshow(picture, cmap=gray)
            heat = maps[i].detach().float().cpu().numpy()
            axes[i, j].imshow(heat, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
            axes[i, j].set_title(titles[i], fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=100)
    return out
