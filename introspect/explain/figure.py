"""PNG figures: the explanatory paradigms (why P? why P, rather than Q? why not P?), a gallery
of map methods, the introspective "why P, rather than Q?" for every Q, and VOICE scores."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch import nn

from introspect.explain.class_maps import contrast_cam, counterfactual_cam, gradcam
from introspect.explain.core import (
    ExplanationError,
    check_images,
    explaining,
    minmax_normalize,
)
from introspect.explain.layers import LayerSpec
from introspect.explain.uncertainty import VoiceEvaluation, VoiceResult
from introspect.metrics.layout import fit_suptitle


def display_image(image: torch.Tensor) -> np.ndarray:
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
    title: str = "",
    image_names: Sequence[str] | None = None,
) -> Path:
    """Write a PNG explaining the model's prediction P on each image and return its path.

    One row per image; columns: the input (titled with its name from ``image_names``, P, its
    probability and, when ``labels`` are given, the true class), Grad-CAM "why P?",
    Contrast-CAM "why P, rather than Q?" for the ``contrasts`` next most likely classes Q (at
    most N - 1), and Counterfactual-CAM "why not P?", each overlaid on the image and titled
    with its method; a colour bar gives the map scale and ``title`` (e.g. the run) heads the
    figure. ``class_names`` holds at least one name per class; ``layer`` is the explained
    layer as for :func:`~introspect.explain.gradcam`. Parent folders of ``path`` are created.
    """
    check_images(images)
    if isinstance(contrasts, bool) or not isinstance(contrasts, int) or contrasts < 0:
        raise ExplanationError(f"contrasts must be a non-negative integer, got {contrasts!r}")
    probs = _probabilities(model, images, class_names)
    if labels is not None and len(labels) != len(images):
        raise ExplanationError(f"give one label per image: {len(labels)} for {len(images)}")
    if image_names is not None and len(image_names) != len(images):
        raise ExplanationError(f"give one name per image: {len(image_names)} for {len(images)}")
    ranking = probs.argsort(dim=1, descending=True)
    predicted = ranking[:, 0]
    name = [[str(class_names[int(c)]) for c in row] for row in ranking]

    why = [f"Grad-CAM\nwhy {n[0]}?" for n in name]
    columns = [(why, gradcam(model, images, layer, predicted))]
    for k in range(1, min(contrasts, probs.shape[1] - 1) + 1):
        why_rather = [f"Contrast-CAM\nwhy {n[0]}, not {n[k]}?" for n in name]
        columns.append(
            (why_rather, contrast_cam(model, images, layer, predicted, contrast=ranking[:, k]))
        )
    why_not = [f"Counterfactual-CAM\nwhy not {n[0]}?" for n in name]
    columns.append((why_not, counterfactual_cam(model, images, layer, predicted)))
    heading = _heading(title, "Grad-CAM, Contrast-CAM and Counterfactual-CAM")
    fig = _map_rows(images, probs, predicted, class_names, columns, labels, image_names, (2.2, 2.7))
    fit_suptitle(fig, heading)
    return _save(fig, path)


def _probabilities(
    model: nn.Module, images: torch.Tensor, class_names: Sequence[str]
) -> torch.Tensor:
    """The model's ``(B, N)`` softmax outputs on ``images`` (on the CPU); ``ExplanationError``
    if ``class_names`` holds fewer than N names."""
    with explaining(model), torch.no_grad():
        probs = model(images.detach()).softmax(dim=1).cpu()
    if len(class_names) < probs.shape[1]:
        raise ExplanationError(
            f"the model has {probs.shape[1]} classes but only {len(class_names)} class names "
            "were given"
        )
    return probs


def _prediction_title(class_names: Sequence[str], predicted: int, prob: float, label: Any) -> str:
    """``P = name (prob%)``, with the true class ``label`` below it unless ``None``."""
    title = f"P = {class_names[predicted]} ({prob:.0%})"
    return title if label is None else f"{title}\ntrue: {class_names[int(label)]}"


def _map_rows(
    images: torch.Tensor,
    probs: torch.Tensor,
    predicted: torch.Tensor,
    class_names: Sequence[str],
    columns: Sequence[tuple[Sequence[str], torch.Tensor]],
    labels: Sequence[int] | torch.Tensor | None,
    image_names: Sequence[str] | None,
    cell: tuple[float, float],
) -> Figure:
    """A figure of one row per image: the image titled with its name, the prediction P and the
    true class, then every column's ``(titles, maps)`` overlaid on it, and a colour bar of the
    map scale. ``cell`` is the ``(width, height)`` of one panel in inches."""
    rows, cols = len(images), len(columns) + 1
    fig = Figure(figsize=(cell[0] * cols + 0.8, cell[1] * rows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i in range(rows):
        picture = display_image(images[i])
        label = None if labels is None else labels[i]
        heading = _prediction_title(
            class_names, int(predicted[i]), float(probs[i, predicted[i]]), label
        )
        if image_names is not None:
            heading = f"{image_names[i]}\n{heading}"
        axes[i, 0].imshow(picture, cmap="gray" if picture.ndim == 2 else None)
        axes[i, 0].set_title(heading, fontsize=8)
        for j, (titles, maps) in enumerate(columns, start=1):
            _overlay(axes[i, j], picture, maps[i], titles[i])
    for ax in axes.flat:
        ax.axis("off")
    _map_colorbar(fig, axes)
    return fig


def _heading(title: str, what: str) -> str:
    return f"{title}: {what}" if title else what


def _map_colorbar(fig: Figure, axes: Any) -> None:
    """A colour bar beside ``axes`` for the overlaid maps (min-max normalized to [0, 1])."""
    mappable = ScalarMappable(norm=Normalize(0.0, 1.0), cmap="jet")
    bar = fig.colorbar(mappable, ax=axes, shrink=0.6, aspect=30)
    bar.set_label("map value (min-max normalized)", fontsize=8)
    bar.ax.tick_params(labelsize=7)


def _overlay(ax: Any, picture: np.ndarray, heat: torch.Tensor, title: str) -> None:
    ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
    ax.imshow(heat.detach().float().cpu().numpy(), cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
    ax.set_title(title, fontsize=8)


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=100)
    return out


def methods_figure(
    model: nn.Module,
    images: torch.Tensor,
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    methods: Mapping[str, Callable[..., torch.Tensor]],
    *,
    layer: LayerSpec = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    labels: Sequence[int] | torch.Tensor | None = None,
    title: str = "",
    image_names: Sequence[str] | None = None,
) -> Path:
    """Write a PNG with one row per image: the input (titled with its name from
    ``image_names`` and the prediction P) and the map of every method in ``methods`` (name ->
    map function, called with ``layer``, P and ``options[name]``) overlaid on it and titled
    with the method, a colour bar of the map scale and ``title`` (e.g. the run) above them;
    return its path."""
    check_images(images)
    if not methods:
        raise ExplanationError("give at least one method to draw")
    options = options or {}
    probs = _probabilities(model, images, class_names)
    predicted = probs.argmax(dim=1)
    maps = {
        name: method(model, images, layer, predicted.to(images.device), **options.get(name, {}))
        for name, method in methods.items()
    }
    if image_names is not None and len(image_names) != len(images):
        raise ExplanationError(f"give one name per image: {len(image_names)} for {len(images)}")
    columns = [([name.replace("_", " ")] * len(images), heat) for name, heat in maps.items()]
    fig = _map_rows(images, probs, predicted, class_names, columns, labels, image_names, (1.7, 2.0))
    fit_suptitle(fig, _heading(title, f"{len(maps)} explanation methods"))
    return _save(fig, path)


def class_gradients(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The per-class gradient features of ``images``: ``(B, N, N, D)``, where ``[b, q]`` is
    ``dCE(z, e_q)/dW = (p - e_q) h^T`` for the head weight ``W`` (N x D), unnormalized — the
    introspective answers to "why P, rather than q?" (docs/concepts.md)."""
    from introspect.gradients import extract

    check_images(images)
    with explaining(model):
        flat = extract(model, images.detach(), per_class=True, normalize="none")
    with explaining(model), torch.no_grad():
        classes = model(images[:1].detach()).shape[1]
    return flat.view(len(images), classes, classes, -1)


def introspection_figure(
    model: nn.Module,
    image: torch.Tensor,
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    layer: LayerSpec = None,
    label: int | None = None,
) -> Path:
    """Write a PNG answering "why P, rather than Q?" for every class Q of one image
    ``(C, H, W)``: the top row shows the per-class gradient features ``(p - e_Q) h^T`` (the
    head's N x D weight gradient for label Q, one shared colour scale; :func:`class_gradients`),
    the bottom row the Contrast-CAM for the same Q (``layer`` as for
    :func:`~introspect.explain.gradcam`). Returns its path."""
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ExplanationError(f"image must be one (C, H, W) tensor, got {shape}")
    images = image[None]
    grads = class_gradients(model, images)[0].cpu()  # (N, N, D)
    classes = grads.shape[0]
    probs = _probabilities(model, images, class_names)[0]
    predicted = int(probs.argmax())
    contrasts = contrast_cam(
        model,
        images.expand(classes, -1, -1, -1),
        layer,
        predicted,
        contrast=torch.arange(classes, device=image.device),
    )
    scale = float(grads.abs().max()) or 1.0
    fig = Figure(figsize=(1.6 * (classes + 1), 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, classes + 1, squeeze=False)
    picture = display_image(image)
    p_name = class_names[predicted]
    title = _prediction_title(class_names, predicted, float(probs[predicted]), label)
    axes[0, 0].imshow(picture, cmap="gray" if picture.ndim == 2 else None)
    axes[0, 0].set_title(title, fontsize=8)
    axes[1, 0].imshow(picture, cmap="gray" if picture.ndim == 2 else None)
    axes[1, 0].set_title("Contrast-CAMs →", fontsize=8)
    for q in range(classes):
        why = f"why {p_name},\nrather than {class_names[q]}?"
        axes[0, q + 1].imshow(
            grads[q].numpy(),
            cmap="coolwarm",
            vmin=-scale,
            vmax=scale,
            aspect="auto",
            interpolation="nearest",
        )
        axes[0, q + 1].set_title(why, fontsize=7)
        _overlay(axes[1, q + 1], picture, contrasts[q], f"Contrast-CAM Q={class_names[q]}")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[1]:
        ax.axis("off")
    axes[0, 0].axis("off")
    fig.suptitle(
        "gradient features (p − e_Q) hᵀ of the head (rows: classes, columns: penultimate units)",
        fontsize=8,
    )
    return _save(fig, path)


def voice_figure(
    evaluation: VoiceEvaluation,
    path: str | os.PathLike[str],
    *,
    examples: tuple[torch.Tensor, VoiceResult] | None = None,
    titles: Sequence[str] | None = None,
) -> Path:
    """Write a PNG of a dataset's VOICE scores: histograms of IoU and SNR for correct and
    incorrect predictions, and optionally ``examples`` — images ``(k, C, H, W)`` with their
    :func:`~introspect.explain.uncertainty` result — as image | Grad-CAM | normalized uncertainty
    columns (``titles`` label the images). Returns its path."""
    rows = 1 + (len(examples[0]) if examples is not None else 0)
    fig = Figure(figsize=(8.0, 3.0 + 2.0 * (rows - 1)))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows, 6, height_ratios=[1.4] + [1.0] * (rows - 1))
    summary = evaluation.summary()
    for k, (key, name) in enumerate((("iou", "IoU"), ("snr", "SNR"))):
        ax = fig.add_subplot(grid[0, 3 * k : 3 * k + 3])
        values = getattr(evaluation, key).double().numpy()
        correct = evaluation.correct.numpy()
        bins = np.histogram_bin_edges(values, bins=20)
        for keep, group, color in (
            (correct, "correct", "tab:blue"),
            (~correct, "incorrect", "tab:red"),
        ):
            if keep.any():
                mean = summary[group][f"mean_{key}"]
                ax.hist(
                    values[keep],
                    bins=bins,
                    density=True,
                    alpha=0.5,
                    color=color,
                    label=f"{group} (n={int(keep.sum())}, mean {mean:.3f})",
                )
        ax.set_title(f"VOICE {name}", fontsize=9)
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
    if examples is not None:
        images, result = examples
        for i in range(len(images)):
            picture = display_image(images[i])
            u = minmax_normalize(result.uncertainty[i : i + 1])[0]
            panels = (
                (None, titles[i] if titles is not None else ""),
                (result.explanation[i], "Grad-CAM (why P?)"),
                (u, f"uncertainty, IoU {float(result.iou[i]):.2f}, SNR {float(result.snr[i]):.2f}"),
            )
            for j, (heat, title) in enumerate(panels):
                ax = fig.add_subplot(grid[i + 1, 2 * j : 2 * j + 2])
                ax.axis("off")
                if heat is None:
                    ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
                    ax.set_title(title, fontsize=8)
                else:
                    _overlay(ax, picture, heat, title)
    return _save(fig, path)
