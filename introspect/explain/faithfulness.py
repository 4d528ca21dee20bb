"""Faithfulness of explanation maps: deletion and insertion curves and their areas (Petsiuk
et al. 2018), for single batches and for whole datasets of several methods.

Deletion hides the pixels in the order of the map (most important first) and follows the
softmax probability of the explained class; a faithful map makes it fall fast (low area).
Insertion starts from the hidden image and reveals pixels in the same order; a faithful map
makes the probability rise fast (high area).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from introspect.explain.core import (
    Baseline,
    ExplanationError,
    MapMethod,
    Target,
    baseline_images,
    check_images,
    check_positive_int,
    explaining,
    resolve_targets,
)

MODES = ("deletion", "insertion")


def pixel_ranks(maps: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``(B, H, W)`` rank of every pixel in its map: 0 for the highest value. Equal values are
    ordered by a random permutation seeded by ``seed`` (the same for every image)."""
    flat = maps.detach().flatten(1)
    generator = torch.Generator().manual_seed(seed)
    shuffle = torch.randperm(flat.shape[1], generator=generator).to(flat.device)
    order = shuffle[flat[:, shuffle].argsort(dim=1, descending=True, stable=True)]
    ranks = torch.empty_like(order)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    ranks.scatter_(1, order, positions)
    return ranks.view(maps.shape)


def step_counts(pixels: int, steps: int) -> torch.Tensor:
    """The number of pixels changed after each of ``steps`` equal steps, ``0 .. pixels``."""
    check_positive_int("steps", steps)
    return torch.round(torch.linspace(0, pixels, steps + 1, dtype=torch.float64)).long()


def perturbation_curves(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    target: Target = None,
    *,
    mode: str = "deletion",
    steps: int = 32,
    baseline: Baseline | None = None,
    batch_size: int = 256,
    seed: int = 0,
) -> torch.Tensor:
    """``(B, steps + 1)`` softmax probabilities of the target class as pixels are deleted or
    inserted in the order of ``maps`` (``(B, H, W)``, highest first).

    Point ``k`` has the top ``round(k H W / steps)`` pixels (all channels) set to the baseline
    (``mode="deletion"``) or, starting from the baseline image, set back to the image
    (``"insertion"``). ``baseline`` as in :func:`~introspect.explain.core.baseline_images`;
    ``None`` means each image's mean colour for deletion and the blurred image for insertion.
    ``target`` defaults to the prediction on the clean images. Ties in a map are ordered at
    random (see :func:`pixel_ranks`). The ``B * (steps + 1)`` images go through the model
    ``batch_size`` at a time.
    """
    check_images(images)
    check_positive_int("batch_size", batch_size)
    if mode not in MODES:
        raise ExplanationError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    x = images.detach()
    if not isinstance(maps, torch.Tensor) or maps.shape != (x.shape[0], *x.shape[-2:]):
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ExplanationError(
            f"maps must be ({x.shape[0]}, {x.shape[-2]}, {x.shape[-1]}) like the images, got "
            f"{shape}"
        )
    if baseline is None:
        baseline = "mean" if mode == "deletion" else "blur"
    counts = step_counts(x.shape[-2] * x.shape[-1], steps).to(x.device)
    points = len(counts)
    with explaining(model), torch.no_grad():
        fill = baseline_images(x, baseline)
        ranks = pixel_ranks(maps.to(x.device), seed)
        curves = torch.empty(x.shape[0], points, dtype=x.dtype, device=x.device)
        classes = resolve_targets(target, model(x))
        for begin in range(0, x.shape[0] * points, batch_size):
            index = torch.arange(
                begin, min(begin + batch_size, x.shape[0] * points), device=x.device
            )
            image, point = index // points, index % points
            changed = (ranks[image] < counts[point].view(-1, 1, 1))[:, None]
            if mode == "deletion":
                batch = torch.where(changed, fill[image], x[image])
            else:
                batch = torch.where(changed, x[image], fill[image])
            probs = model(batch).softmax(dim=1).gather(1, classes[image, None])[:, 0]
            curves[image, point] = probs
    return curves


def curve_auc(curves: torch.Tensor) -> torch.Tensor:
    """Area under each ``(B, K)`` curve sampled at ``K`` equally spaced points of ``[0, 1]``
    (trapezoid rule): ``(B,)``."""
    if curves.ndim != 2 or curves.shape[1] < 2:
        raise ExplanationError(f"curves must be (B, K) with K >= 2, got {tuple(curves.shape)}")
    return torch.trapezoid(curves, dx=1.0 / (curves.shape[1] - 1), dim=1)


class Faithfulness(NamedTuple):
    """Deletion and insertion curves ``(B, steps + 1)`` of a batch and their areas ``(B,)``."""

    deletion: torch.Tensor
    insertion: torch.Tensor
    deletion_auc: torch.Tensor
    insertion_auc: torch.Tensor


def deletion_insertion(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    target: Target = None,
    *,
    steps: int = 32,
    deletion_baseline: Baseline = "mean",
    insertion_baseline: Baseline = "blur",
    batch_size: int = 256,
    seed: int = 0,
) -> Faithfulness:
    """Deletion and insertion curves of ``maps`` and their AUCs (see
    :func:`perturbation_curves`; lower deletion and higher insertion AUC = more faithful)."""
    common: dict[str, Any] = {"steps": steps, "batch_size": batch_size, "seed": seed}
    deletion = perturbation_curves(
        model, images, maps, target, mode="deletion", baseline=deletion_baseline, **common
    )
    insertion = perturbation_curves(
        model, images, maps, target, mode="insertion", baseline=insertion_baseline, **common
    )
    return Faithfulness(deletion, insertion, curve_auc(deletion), curve_auc(insertion))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate_faithfulness(
    model: nn.Module,
    batches: Iterable[torch.Tensor | tuple[torch.Tensor, Any] | list[Any]],
    methods: Mapping[str, MapMethod],
    *,
    layer: Any = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    steps: int = 32,
    deletion_baseline: Baseline = "mean",
    insertion_baseline: Baseline = "blur",
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, float]]:
    """A table ``{method: {"deletion_auc", "insertion_auc", "seconds_per_image", "images"}}``
    of mean AUCs over every image of ``batches`` (tensors or ``(images, labels, ...)``).

    Each method is called as ``method(model, images, layer, normalize=False, **options[name])``
    for the predicted class; ``seconds_per_image`` times only the map computation (wall clock,
    synchronized on CUDA). ``device`` moves the images (default: where they are).
    """
    if not methods:
        raise ExplanationError("give at least one method to evaluate")
    options = options or {}
    unknown = sorted(set(options) - set(methods))
    if unknown:
        raise ExplanationError(f"options given for methods not evaluated: {', '.join(unknown)}")
    sums = {name: {"deletion_auc": 0.0, "insertion_auc": 0.0, "seconds": 0.0} for name in methods}
    count = 0
    for batch in batches:
        images = batch[0] if isinstance(batch, tuple | list) else batch
        if device is not None:
            images = images.to(device)
        check_images(images)
        with explaining(model), torch.no_grad():
            predicted = model(images).argmax(dim=1)
        for name, method in methods.items():
            _sync(images.device)
            started = time.perf_counter()
            maps = method(model, images, layer, predicted, normalize=False, **options.get(name, {}))
            _sync(images.device)
            sums[name]["seconds"] += time.perf_counter() - started
            result = deletion_insertion(
                model,
                images,
                maps,
                predicted,
                steps=steps,
                deletion_baseline=deletion_baseline,
                insertion_baseline=insertion_baseline,
                batch_size=batch_size,
                seed=seed,
            )
            sums[name]["deletion_auc"] += float(result.deletion_auc.sum())
            sums[name]["insertion_auc"] += float(result.insertion_auc.sum())
        count += images.shape[0]
        if progress is not None:
            progress(f"{count} images")
    if count == 0:
        raise ExplanationError("no images to evaluate")
    return {
        name: {
            "deletion_auc": s["deletion_auc"] / count,
            "insertion_auc": s["insertion_auc"] / count,
            "seconds_per_image": s["seconds"] / count,
            "images": count,
        }
        for name, s in sums.items()
    }


def format_faithfulness(table: Mapping[str, Mapping[str, float]], digits: int = 4) -> str:
    """Markdown of a :func:`evaluate_faithfulness` table."""
    lines = [
        "| method | deletion AUC ↓ | insertion AUC ↑ | seconds / image |",
        "|---|---:|---:|---:|",
    ]
    for name, row in table.items():
        lines.append(
            f"| {name} | {row['deletion_auc']:.{digits}f} | {row['insertion_auc']:.{digits}f} | "
            f"{row['seconds_per_image']:.4f} |"
        )
    return "\n".join(lines)
