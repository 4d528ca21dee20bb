"""Looking inside the network (the FunML lecture seed): first-layer filters, activation maps
of a layer, the dataset patches that most activate a channel, nearest neighbours in the
penultimate space and a t-SNE of penultimate features; each with a figure."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from introspect.explain.core import (
    ExplanationError,
    check_images,
    check_positive_int,
    explaining,
)
from introspect.explain.figure import display_image as display
from introspect.explain.layers import LayerCapture, LayerSpec

Batches = Iterable[torch.Tensor | tuple[torch.Tensor, Any] | list[Any]]


def _images_of(batch: torch.Tensor | tuple[torch.Tensor, Any] | list[Any]) -> torch.Tensor:
    images = batch[0] if isinstance(batch, tuple | list) else batch
    check_images(images)
    return images


def _labels_of(batch: torch.Tensor | tuple[torch.Tensor, Any] | list[Any]) -> torch.Tensor | None:
    if isinstance(batch, tuple | list) and len(batch) > 1:
        return torch.as_tensor(batch[1]).long().cpu()
    return None


def first_conv(model: nn.Module, images: torch.Tensor | None = None) -> nn.Conv2d:
    """The first ``nn.Conv2d`` the forward pass on ``images`` runs; without images, on zeros of
    the model's ``input_size`` when it has one (``Backbone``), else the first registered one."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ExplanationError("the model has no nn.Conv2d layer")
    if images is None:
        size = getattr(model, "input_size", None)
        if size is None:
            return convs[0]
        images = torch.zeros(1, *size, device=next(model.parameters()).device)
    check_images(images)
    executed: list[nn.Conv2d] = []
    handles = [c.register_forward_hook(lambda m, i, o: executed.append(m)) for c in convs]
    try:
        with explaining(model), torch.no_grad():
            model(images[:1].detach())
    finally:
        for handle in handles:
            handle.remove()
    if not executed:
        raise ExplanationError("no nn.Conv2d ran in the forward pass")
    return executed[0]


def first_layer_filters(model: nn.Module, images: torch.Tensor | None = None) -> torch.Tensor:
    """The weights ``(K, C, kh, kw)`` of the first convolution (see :func:`first_conv`),
    detached on the CPU."""
    return first_conv(model, images).weight.detach().cpu().clone()


def activation_maps(
    model: nn.Module, images: torch.Tensor, layer: LayerSpec = None
) -> torch.Tensor:
    """The ``(B, K, h, w)`` output of ``layer`` (module or dotted path; ``None``: the last
    executed ``nn.Conv2d``) for ``images``, detached."""
    check_images(images)
    with explaining(model), torch.no_grad(), LayerCapture(model, layer) as capture:
        model(images.detach())
        return capture.activations().detach().clone()


class Patches(NamedTuple):
    """The images that most activate one channel: ``scores`` ``(k,)`` (the channel's maximum
    over positions, descending), ``indices`` ``(k,)`` (positions in the dataset order),
    ``positions`` ``(k, 2)`` (row, column of the maximum in the feature map), ``boxes``
    ``(k, 4)`` (top, left, bottom, right; exclusive ends) of the input region that position
    depends on, and ``patches`` (the ``(C, h, w)`` crops, sizes may differ)."""

    scores: torch.Tensor
    indices: torch.Tensor
    positions: torch.Tensor
    boxes: torch.Tensor
    patches: list[torch.Tensor]


def dependence_box(
    model: nn.Module,
    images: torch.Tensor,
    layer: LayerSpec,
    channel: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """``(B, 4)`` boxes (top, left, bottom, right; exclusive ends) around the input pixels on
    which activation ``A[b, channel[b], row_b, col_b]`` has a nonzero gradient (the effective
    receptive field on that image); the whole image when the gradient is zero."""
    check_images(images)
    with explaining(model), LayerCapture(model, layer) as capture:
        x = images.detach().clone().requires_grad_(True)
        model(x)
        acts = capture.activations()
        rows = torch.arange(len(x), device=acts.device)
        picked = acts[rows, channel, positions[:, 0], positions[:, 1]]
        (grad,) = torch.autograd.grad(picked.sum(), x)
    support = grad.abs().sum(dim=1) > 0  # (B, H, W)
    height, width = support.shape[-2:]
    boxes = torch.tensor([[0, 0, height, width]] * len(x))
    for b, mask in enumerate(support.cpu()):
        ys, xs = mask.any(dim=1).nonzero()[:, 0], mask.any(dim=0).nonzero()[:, 0]
        if len(ys):
            boxes[b] = torch.tensor([ys[0], xs[0], ys[-1] + 1, xs[-1] + 1])
    return boxes


def top_activating_patches(
    model: nn.Module,
    batches: Batches,
    layer: LayerSpec,
    channel: int,
    k: int = 8,
    *,
    device: torch.device | str | None = None,
) -> Patches:
    """The ``k`` images of ``batches`` whose activation map of ``channel`` in ``layer`` has the
    highest maximum, with the input patch each maximum depends on (:func:`dependence_box`).
    Ties keep the earlier image."""
    check_positive_int("k", k)
    if isinstance(channel, bool) or not isinstance(channel, int) or channel < 0:
        raise ExplanationError(f"channel must be a non-negative integer, got {channel!r}")
    best_scores = torch.empty(0)
    best_index = torch.empty(0, dtype=torch.long)
    best_pos = torch.empty(0, 2, dtype=torch.long)
    best_images: torch.Tensor | None = None
    seen = 0
    for batch in batches:
        images = _images_of(batch)
        if device is not None:
            images = images.to(device)
        acts = activation_maps(model, images, layer)
        if channel >= acts.shape[1]:
            raise ExplanationError(f"channel must lie in [0, {acts.shape[1]}), got {channel}")
        flat = acts[:, channel].flatten(1).cpu()
        values, where = flat.max(dim=1)
        width = acts.shape[-1]
        pos = torch.stack([where // width, where % width], dim=1)
        index = torch.arange(seen, seen + len(images))
        cpu_images = images.detach().cpu()
        scores = torch.cat([best_scores, values])
        order = scores.argsort(descending=True, stable=True)[:k]
        pool = cpu_images if best_images is None else torch.cat([best_images, cpu_images])
        best_scores, best_images = scores[order], pool[order]
        best_index = torch.cat([best_index, index])[order]
        best_pos = torch.cat([best_pos, pos])[order]
        seen += len(images)
    if best_images is None:
        raise ExplanationError("no images to search")
    target_device = device if device is not None else next(model.parameters()).device
    boxes = dependence_box(
        model,
        best_images.to(target_device),
        layer,
        torch.full((len(best_images),), channel, device=target_device),
        best_pos.to(target_device),
    )
    patches = [
        img[:, t:b, lf:r] for img, (t, lf, b, r) in zip(best_images, boxes.tolist(), strict=True)
    ]
    return Patches(best_scores, best_index, best_pos, boxes, patches)


def _head_of(model: nn.Module, example: torch.Tensor) -> nn.Linear:
    from introspect.backbones.head import find_head, get_submodule

    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        return head
    try:
        module = get_submodule(model, find_head(model, example[:1]))
    except ValueError as err:
        raise ExplanationError(str(err)) from None
    assert isinstance(module, nn.Linear)
    return module


class Features(NamedTuple):
    """Penultimate features ``(n, D)`` (the head's input), ``labels`` ``(n,)`` (-1 where the
    batches had none) and ``predicted`` ``(n,)`` classes, on the CPU."""

    features: torch.Tensor
    labels: torch.Tensor
    predicted: torch.Tensor


def penultimate_features(
    model: nn.Module, batches: Batches, *, device: torch.device | str | None = None
) -> Features:
    """The input of the model's head (its ``head`` attribute or the last ``nn.Linear`` the
    forward pass runs) for every image of ``batches``, with labels and predictions."""
    from introspect.backbones.head import forward_with_head_input

    parts: dict[str, list[torch.Tensor]] = {"features": [], "labels": [], "predicted": []}
    head: nn.Linear | None = None
    for batch in batches:
        images = _images_of(batch)
        if device is not None:
            images = images.to(device)
        labels = _labels_of(batch)
        if head is None:
            head = _head_of(model, images)
        with explaining(model), torch.no_grad():
            logits, h = forward_with_head_input(model, head, images.detach())
        parts["features"].append(h.flatten(1).cpu())
        parts["predicted"].append(logits.argmax(dim=1).cpu())
        parts["labels"].append(labels if labels is not None else torch.full((len(h),), -1))
    if head is None:
        raise ExplanationError("no images to embed")
    return Features(*(torch.cat(parts[key]) for key in ("features", "labels", "predicted")))


def nearest_neighbours(
    queries: torch.Tensor, gallery: torch.Tensor, k: int = 5, *, exclude_self: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(distances, indices)``, each ``(q, k)``: the ``k`` rows of ``gallery`` ``(n, D)``
    nearest to each row of ``queries`` ``(q, D)`` in Euclidean distance, nearest first (ties:
    lower index first). ``exclude_self`` skips gallery row ``i`` for query ``i`` (queries
    taken from the gallery)."""
    check_positive_int("k", k)
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ExplanationError(
            f"queries and gallery must be (q, D) and (n, D), got {tuple(queries.shape)} and "
            f"{tuple(gallery.shape)}"
        )
    available = len(gallery) - (1 if exclude_self else 0)
    if k > available:
        raise ExplanationError(f"k={k} exceeds the {available} gallery rows available")
    distances = torch.cdist(queries.double(), gallery.double())
    if exclude_self:
        if len(queries) > len(gallery):
            raise ExplanationError("exclude_self needs the queries to be the first gallery rows")
        distances[torch.arange(len(queries)), torch.arange(len(queries))] = float("inf")
    order = distances.argsort(dim=1, stable=True)[:, :k]
    return distances.gather(1, order).to(queries.dtype), order


def tsne_embedding(
    features: torch.Tensor, *, seed: int = 0, perplexity: float = 30.0, iterations: int = 1000
) -> np.ndarray:
    """A 2-D t-SNE embedding ``(n, 2)`` of ``features`` ``(n, D)`` (scikit-learn, PCA
    initialization, ``iterations`` optimization steps (at least 250), seeded). The perplexity
    is lowered to ``(n - 1) / 3`` for small sets."""
    from sklearn.manifold import TSNE

    if features.ndim != 2 or len(features) < 4:
        raise ExplanationError(
            f"t-SNE needs (n, D) features with n >= 4, got {tuple(features.shape)}"
        )
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 250:
        raise ExplanationError(f"iterations must be an integer >= 250, got {iterations!r}")
    perplexity = min(float(perplexity), (len(features) - 1) / 3)
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        random_state=seed,
        max_iter=iterations,
    )
    return tsne.fit_transform(features.double().numpy())


# ---- figures -------------------------------------------------------------------------------


def _canvas(rows: int, cols: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width * cols, height * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=100)
    return out


def _scaled(weights: torch.Tensor) -> torch.Tensor:
    """Each filter min-max scaled to [0, 1] on its own (all zeros if constant)."""
    flat = weights.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    span = torch.where(high > low, high - low, torch.ones_like(high))
    return (weights - low.view(-1, 1, 1, 1)) / span.view(-1, 1, 1, 1)


def filters_figure(weights: torch.Tensor, path: str | os.PathLike[str], *, cols: int = 8) -> Path:
    """A grid of first-layer filters ``(K, C, kh, kw)`` (each scaled to [0, 1] on its own; RGB
    when C = 3, the channel mean in grey otherwise); returns the PNG's path."""
    if weights.ndim != 4:
        raise ExplanationError(f"weights must be (K, C, kh, kw), got {tuple(weights.shape)}")
    count = weights.shape[0]
    cols = min(cols, count)
    rows = -(-count // cols)
    fig, axes = _canvas(rows, cols, 1.0, 1.0)
    scaled = _scaled(weights.float())
    for i in range(count):
        picture = display(scaled[i])
        axes.flat[i].imshow(
            picture, cmap="gray" if picture.ndim == 2 else None, interpolation="nearest"
        )
        axes.flat[i].set_title(str(i), fontsize=7)
    fig.suptitle(f"first-layer filters {tuple(weights.shape[1:])}", fontsize=9)
    return _save(fig, path)


def activations_figure(
    image: torch.Tensor,
    activations: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    channels: int = 16,
    cols: int = 8,
) -> Path:
    """The input ``(C, H, W)`` and the ``channels`` most active maps (highest mean) of its layer
    activations ``(K, h, w)``, titled with their channel index; returns the PNG's path."""
    if activations.ndim != 3:
        raise ExplanationError(f"activations must be (K, h, w), got {tuple(activations.shape)}")
    channels = min(check_positive_int("channels", channels), activations.shape[0])
    order = activations.flatten(1).mean(1).argsort(descending=True, stable=True)[:channels]
    cols = min(cols, channels + 1)
    rows = -(-(channels + 1) // cols)
    fig, axes = _canvas(rows, cols, 1.3, 1.3)
    picture = display(image)
    axes.flat[0].imshow(picture, cmap="gray" if picture.ndim == 2 else None)
    axes.flat[0].set_title("input", fontsize=7)
    for i, c in enumerate(order.tolist(), start=1):
        axes.flat[i].imshow(activations[c].float().cpu().numpy(), cmap="viridis")
        axes.flat[i].set_title(f"channel {c}", fontsize=7)
    return _save(fig, path)


def patches_figure(
    found: Sequence[tuple[int, Patches]], path: str | os.PathLike[str], *, layer_name: str = ""
) -> Path:
    """One row per ``(channel, patches)``: its top patches, titled with their activation."""
    if not found:
        raise ExplanationError("no channels to draw")
    cols = max(len(p.patches) for _, p in found)
    fig, axes = _canvas(len(found), cols, 1.1, 1.2)
    for r, (channel, patches) in enumerate(found):
        for c, (patch, score) in enumerate(
            zip(patches.patches, patches.scores.tolist(), strict=True)
        ):
            picture = display(patch)
            axes[r, c].imshow(picture, cmap="gray" if picture.ndim == 2 else None)
            axes[r, c].set_title(f"ch {channel}: {score:.2f}", fontsize=6)
    fig.suptitle(f"maximally activating patches {layer_name}".strip(), fontsize=9)
    return _save(fig, path)


def neighbours_figure(
    queries: torch.Tensor,
    neighbours: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    query_titles: Sequence[str] | None = None,
    neighbour_titles: Sequence[Sequence[str]] | None = None,
) -> Path:
    """One row per query image ``(q, C, H, W)``: the query, then its neighbours
    ``(q, k, C, H, W)``."""
    if neighbours.ndim != 5 or neighbours.shape[0] != queries.shape[0]:
        raise ExplanationError(
            f"neighbours must be (q, k, C, H, W) for {queries.shape[0]} queries, got "
            f"{tuple(neighbours.shape)}"
        )
    rows, k = neighbours.shape[:2]
    fig, axes = _canvas(rows, k + 1, 1.2, 1.3)
    for r in range(rows):
        for c, image in enumerate([queries[r], *neighbours[r]]):
            picture = display(image)
            axes[r, c].imshow(picture, cmap="gray" if picture.ndim == 2 else None)
            if c == 0 and query_titles is not None:
                axes[r, c].set_title(f"query: {query_titles[r]}", fontsize=7)
            elif c > 0 and neighbour_titles is not None:
                axes[r, c].set_title(neighbour_titles[r][c - 1], fontsize=7)
    fig.suptitle("nearest neighbours in penultimate space (L2)", fontsize=9)
    return _save(fig, path)


def tsne_figure(
    embedding: np.ndarray,
    labels: torch.Tensor | np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike[str],
) -> Path:
    """A scatter plot of a 2-D embedding ``(n, 2)`` coloured by class, with a legend."""
    labels = np.asarray(labels)
    if embedding.shape != (len(labels), 2):
        raise ExplanationError(
            f"embedding must be ({len(labels)}, 2) for {len(labels)} labels, got {embedding.shape}"
        )
    fig = Figure(figsize=(6.5, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    cmap = "tab10" if len(class_names) <= 10 else "tab20"
    for c in np.unique(labels):
        keep = labels == c
        name = class_names[int(c)] if 0 <= int(c) < len(class_names) else str(int(c))
        ax.scatter(*embedding[keep].T, s=6, label=name, color=_color(cmap, int(c)))
    ax.legend(fontsize=7, markerscale=2, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("t-SNE of penultimate features", fontsize=9)
    return _save(fig, path)


def _color(cmap: str, index: int) -> Any:
    from matplotlib import colormaps

    palette = colormaps[cmap]
    return palette(index % palette.N)
