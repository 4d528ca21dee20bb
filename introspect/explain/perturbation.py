"""Black-box maps from perturbed copies of the image: RISE (random masks) and LIME (a local
linear model on superpixels). Only the model's softmax outputs are used."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from introspect.explain.core import (
    Baseline,
    ExplanationError,
    MapCall,
    Target,
    baseline_images,
    check_fraction,
    check_images,
    check_positive_int,
    explaining,
    map_method,
    resolve_targets,
)


def _probabilities(
    model: nn.Module, images: torch.Tensor, target: Target
) -> tuple[torch.Tensor, torch.Tensor]:
    """The explained classes (``target`` resolved on the clean images) and their softmax
    probabilities."""
    with torch.no_grad():
        logits = model(images)
    classes = resolve_targets(target, logits)
    return classes, logits.softmax(dim=1).gather(1, classes[:, None])[:, 0]


def rise_masks(
    count: int,
    cells: int,
    size: tuple[int, int],
    *,
    p: float = 0.5,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``count`` RISE masks of ``size`` ``(H, W)`` with values in ``[0, 1]``: a ``cells x
    cells`` grid of independent Bernoulli(``p``) cells upsampled bilinearly to ``cells + 1``
    cells of ``ceil(H / cells) x ceil(W / cells)`` pixels, then cropped to ``(H, W)`` at a
    random offset within one cell (Petsiuk et al. 2018). Seeded by ``seed``."""
    check_positive_int("count", count)
    check_positive_int("cells", cells)
    check_fraction("p", p)
    height, width = size
    cell_h, cell_w = math.ceil(height / cells), math.ceil(width / cells)
    generator = torch.Generator().manual_seed(seed)
    grid = (torch.rand(count, 1, cells, cells, generator=generator) < p).to(torch.float64)
    up = F.interpolate(grid, size=((cells + 1) * cell_h, (cells + 1) * cell_w), mode="bilinear")[
        :, 0
    ]
    dy = torch.randint(0, cell_h, (count,), generator=generator)
    dx = torch.randint(0, cell_w, (count,), generator=generator)
    rows = dy[:, None] + torch.arange(height)
    cols = dx[:, None] + torch.arange(width)
    masks = up[torch.arange(count)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return masks.to(device=device, dtype=dtype)


@map_method
def rise(
    call: MapCall,
    *,
    masks: int = 1000,
    cells: int = 8,
    p: float = 0.5,
    baseline: Baseline = "mean",
    seed: int = 0,
    batch_size: int = 256,
) -> torch.Tensor:
    """RISE (Petsiuk et al. 2018): ``sum_i p_t(x_i) M_i / (masks * p)`` over random masks
    ``M_i`` (:func:`rise_masks`: ``cells x cells`` grids, keep probability ``p``, seeded),
    with ``x_i = M_i x + (1 - M_i) baseline`` and ``p_t`` the softmax probability of the
    target class. Every image gets the same masks; ``masks * B`` masked images go through the
    model ``batch_size`` at a time. ``baseline`` as in
    :func:`~introspect.explain.core.baseline_images` (default each image's mean colour).
    ``layer`` is ignored. Other arguments and the output as for
    :func:`~introspect.explain.gradcam`.
    """
    check_positive_int("batch_size", batch_size)
    model, x = call.model, call.images.detach()
    with explaining(model), torch.no_grad():
        grids = rise_masks(
            masks, cells, x.shape[-2:], p=p, seed=seed, device=x.device, dtype=x.dtype
        )
        fill = baseline_images(x, baseline)
        heat = torch.zeros(x.shape[0], *x.shape[-2:], dtype=x.dtype, device=x.device)
        classes, _ = _probabilities(model, x, call.target)
        for begin in range(0, x.shape[0] * masks, batch_size):
            index = torch.arange(
                begin, min(begin + batch_size, x.shape[0] * masks), device=x.device
            )
            image, which = index // masks, index % masks
            m = grids[which][:, None]
            masked = m * x[image] + (1 - m) * fill[image]
            probs = model(masked).softmax(dim=1).gather(1, classes[image, None])[:, 0]
            heat.index_add_(0, image, probs[:, None, None] * grids[which])
    return heat / (masks * p)


def superpixels(
    images: torch.Tensor, segments: int = 50, *, compactness: float = 10.0
) -> torch.Tensor:
    """SLIC superpixels (scikit-image) of each image: ``(B, H, W)`` labels ``0 .. d_b - 1``.

    ``segments`` is the approximate number of superpixels, ``compactness`` trades colour
    similarity for square shapes. Deterministic. Images with other than three channels are
    segmented on their channels' mean.
    """
    from skimage.segmentation import slic

    check_images(images)
    check_positive_int("segments", segments)
    labels = []
    for image in images.detach().float().cpu().numpy():
        if image.shape[0] == 3:
            seg = slic(
                image, n_segments=segments, compactness=compactness, channel_axis=0, start_label=0
            )
        else:
            seg = slic(
                image.mean(0),
                n_segments=segments,
                compactness=compactness,
                channel_axis=None,
                start_label=0,
            )
        labels.append(np.unique(seg, return_inverse=True)[1].reshape(seg.shape))
    return torch.from_numpy(np.stack(labels)).long().to(images.device)


def _segment_labels(images: torch.Tensor, segments: int | torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` consecutive labels from a superpixel count or given label maps."""
    if not isinstance(segments, torch.Tensor):
        return superpixels(images, segments)
    batch, height, width = images.shape[0], *images.shape[-2:]
    if segments.ndim == 2:
        segments = segments.expand(batch, -1, -1)
    if segments.shape != (batch, height, width) or segments.is_floating_point():
        raise ExplanationError(
            f"segments must be a superpixel count or integer labels of shape ({batch}, {height}, "
            f"{width}) or ({height}, {width}), got {segments.dtype} {tuple(segments.shape)}"
        )
    flat = [torch.unique(s, return_inverse=True)[1].view(height, width) for s in segments]
    return torch.stack(flat).to(images.device)


def lime_samples(count: int, features: int, generator: torch.Generator) -> torch.Tensor:
    """``(count, features)`` binary samples: the first keeps every feature, the others keep
    each one with probability 1/2."""
    z = torch.randint(0, 2, (count, features), generator=generator).to(torch.float64)
    z[0] = 1
    return z


def weighted_ridge(
    z: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Coefficients of ``argmin_b sum_i w_i (y_i - c - z_i b)^2 + alpha |b|^2`` (the
    intercept ``c`` is not penalized), as scikit-learn's ``Ridge`` with ``sample_weight``."""
    w = weights / weights.sum()
    z_mean = (w[:, None] * z).sum(0)
    shifted = y - y[0]  # so that a constant y gives exactly zero coefficients
    zc, yc = z - z_mean, shifted - (w * shifted).sum()
    gram = zc.T @ (weights[:, None] * zc) + alpha * torch.eye(z.shape[1], dtype=z.dtype)
    return torch.linalg.solve(gram, zc.T @ (weights * yc))


@map_method
def lime(
    call: MapCall,
    *,
    samples: int = 500,
    segments: int | torch.Tensor = 50,
    kernel_width: float = 0.25,
    alpha: float = 1.0,
    baseline: Baseline = "mean",
    seed: int = 0,
    batch_size: int = 256,
) -> torch.Tensor:
    """LIME (Ribeiro et al. 2016) on superpixels: each pixel gets the coefficient of its
    superpixel in a weighted ridge regression of ``p_t`` (the target's softmax probability)
    on which superpixels are kept.

    ``segments``: a superpixel count for :func:`superpixels` (SLIC) or the label maps
    themselves, ``(B, H, W)`` or ``(H, W)``. ``samples`` binary keep-vectors ``z`` per image
    (:func:`lime_samples`, the first keeps everything; seeded by ``seed``) give images
    ``z x + (1 - z) baseline`` (default: each image's mean colour); each is weighted by
    ``exp(-d^2 / (2 kernel_width^2))`` with ``d`` the cosine distance of ``z`` to all-ones, and
    the regression is a ridge with penalty ``alpha`` and a free intercept (LIME's defaults).
    Perturbed images go through the model ``batch_size`` at a time. ``layer`` is ignored.
    Other arguments and the output as for :func:`~introspect.explain.gradcam`.
    """
    check_positive_int("samples", samples)
    check_positive_int("batch_size", batch_size)
    if isinstance(kernel_width, bool) or not isinstance(kernel_width, int | float):
        raise ExplanationError(f"kernel_width must be a positive number, got {kernel_width!r}")
    if kernel_width <= 0:
        raise ExplanationError(f"kernel_width must be a positive number, got {kernel_width!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha < 0:
        raise ExplanationError(f"alpha must be a non-negative number, got {alpha!r}")
    model, x = call.model, call.images.detach()
    labels = _segment_labels(x, segments)
    generator = torch.Generator().manual_seed(seed)
    with explaining(model), torch.no_grad():
        fill = baseline_images(x, baseline)
        maps = torch.zeros(x.shape[0], *x.shape[-2:], dtype=x.dtype, device=x.device)
        classes, _ = _probabilities(model, x, call.target)
        for b in range(x.shape[0]):
            features = int(labels[b].max()) + 1
            z = lime_samples(samples, features, generator)
            keep = z.to(device=x.device, dtype=x.dtype)
            probs = []
            for begin in range(0, samples, batch_size):
                kept = keep[begin : begin + batch_size][:, labels[b]][:, None]  # (n, 1, H, W)
                perturbed = kept * x[b] + (1 - kept) * fill[b]
                out = model(perturbed).softmax(dim=1)[:, classes[b]]
                probs.append(out.to(torch.float64).cpu())
            y = torch.cat(probs)
            distance = 1 - torch.sqrt(z.sum(1) / features)  # cosine distance to all-ones
            weights = torch.exp(-(distance**2) / (2 * kernel_width**2))
            coef = weighted_ridge(z, y, weights, float(alpha))
            maps[b] = coef.to(maps)[labels[b]]
    return maps
