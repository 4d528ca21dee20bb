"""Reliability diagrams: per-bin accuracy against confidence, with the confidence histogram.

Binning is the equal-width binning of :class:`~introspect.metrics.ExpectedCalibrationError`
(right-closed bins ``(e_b, e_{b+1}]`` covering ``(0, 1]``). Figures are built on
``matplotlib.figure.Figure`` with an Agg canvas, never through pyplot, so no global backend or
figure state is touched (safe in notebooks and headless jobs alike).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from introspect.metrics.calibration import (
    check_n_bins,
    confidence_and_correct,
    equal_width_bin_index,
    validate_probs_target,
)
from introspect.metrics.layout import fit_legend, fit_suptitle, fit_text

ArrayLike = torch.Tensor | np.ndarray


def reliability_bins(probs: ArrayLike, target: ArrayLike, n_bins: int = 15) -> dict:
    """Per-bin statistics of top-1 confidence over ``n_bins`` equal-width bins.

    Returns a dict of numpy arrays: ``edges`` (n_bins + 1,), ``count`` (n_bins,) int64,
    ``accuracy`` and ``confidence`` (n_bins,) per-bin means (NaN for empty bins), plus the scalars
    ``ece`` (as :class:`~introspect.metrics.ExpectedCalibrationError`), ``accuracy_all`` and
    ``confidence_all`` (means over all samples) and ``n``.
    """
    n_bins = check_n_bins(n_bins)
    probs_t = torch.as_tensor(probs)
    target_t = torch.as_tensor(target)
    validate_probs_target(probs_t, target_t)
    if int(target_t.shape[0]) == 0:
        raise ValueError("reliability_bins needs at least one sample, got an empty batch")
    confidence, correct = confidence_and_correct(probs_t.detach().cpu(), target_t.cpu())
    index = equal_width_bin_index(confidence, n_bins)
    return bins_from_sums(
        torch.zeros(n_bins, dtype=torch.int64).index_add_(0, index, torch.ones_like(index)),
        torch.zeros(n_bins, dtype=torch.float64).index_add_(0, index, confidence),
        torch.zeros(n_bins, dtype=torch.float64).index_add_(0, index, correct),
    )


def bins_from_sums(
    count: torch.Tensor, confidence_sum: torch.Tensor, correct_sum: torch.Tensor
) -> dict:
    """The statistics of :func:`reliability_bins` from per-bin sample counts, confidence sums
    and correct-prediction sums (e.g. ``ExpectedCalibrationError.bin_sums()``, or the sums of
    several splits to pool them)."""
    n = int(count.sum())
    if n == 0:
        raise ValueError("reliability statistics need at least one sample, got empty bins")
    count = count.to(torch.int64)
    confidence_sum, correct_sum = confidence_sum.double(), correct_sum.double()
    filled = count > 0
    nan = torch.full(count.shape, float("nan"), dtype=torch.float64)
    return {
        "edges": np.linspace(0.0, 1.0, len(count) + 1),
        "count": count.numpy(),
        "accuracy": torch.where(filled, correct_sum / count.clamp_min(1), nan).numpy(),
        "confidence": torch.where(filled, confidence_sum / count.clamp_min(1), nan).numpy(),
        "ece": float((correct_sum - confidence_sum).abs().sum() / n),
        "accuracy_all": float(correct_sum.sum() / n),
        "confidence_all": float(confidence_sum.sum() / n),
        "n": n,
    }


def _draw(rel_ax: Axes, hist_ax: Axes, bins: dict, title: str) -> None:
    """Reliability bars, gaps and diagonal on ``rel_ax``; confidence histogram on ``hist_ax``."""
    edges = bins["edges"]
    width = edges[1:] - edges[:-1]
    left = edges[:-1]
    filled = bins["count"] > 0
    acc, conf = bins["accuracy"][filled], bins["confidence"][filled]
    rel_ax.bar(
        left[filled], acc, width=width[filled], align="edge", color="tab:blue",
        edgecolor="black", linewidth=0.6, label="accuracy",
    )  # fmt: skip
    rel_ax.bar(
        left[filled], np.abs(conf - acc), bottom=np.minimum(acc, conf), width=width[filled],
        align="edge", color="tab:red", alpha=0.3, edgecolor="tab:red", hatch="//",
        linewidth=0.6, label="gap to mean confidence",
    )  # fmt: skip
    rel_ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="perfect")
    rel_ax.set_xlim(0, 1)
    rel_ax.set_ylim(0, 1)
    rel_ax.set_ylabel("accuracy")
    heading = f"ECE = {100 * bins['ece']:.2f} %  (n = {bins['n']})"
    fit_text(rel_ax.figure, rel_ax.set_title(f"{title}\n{heading}" if title else heading), rel_ax)

    hist_ax.bar(
        left, bins["count"] / bins["n"], width=width, align="edge", color="tab:gray",
        edgecolor="black", linewidth=0.6,
    )  # fmt: skip
    hist_ax.axvline(bins["accuracy_all"], color="tab:blue", linestyle="-", label="accuracy")
    hist_ax.axvline(
        bins["confidence_all"], color="tab:red", linestyle="--", label="mean confidence"
    )
    hist_ax.set_xlim(0, 1)
    hist_ax.set_xlabel("confidence")
    hist_ax.set_ylabel("fraction")


def _legend_below(fig: Figure, axes: Sequence[Axes]) -> None:
    """One legend for the panels' labelled artists, outside (below) every axes."""
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fit_legend(fig, handles, labels, fontsize="small")


def _finish(fig: Figure, path: str | Path | None) -> Figure:
    """Attach an Agg canvas and write a PNG to ``path`` (parent folders created) if given."""
    FigureCanvasAgg(fig)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=150)
    return fig


def reliability_diagram(
    probs: ArrayLike,
    target: ArrayLike,
    *,
    n_bins: int = 15,
    title: str = "",
    path: str | Path | None = None,
) -> Figure:
    """Reliability diagram (top) and confidence histogram (bottom); ECE in the title.

    Saves a PNG to ``path`` when given.
    """
    bins = reliability_bins(probs, target, n_bins)
    fig = Figure(figsize=(4.5, 6.6), layout="constrained")
    rel_ax, hist_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    _draw(rel_ax, hist_ax, bins, title)
    _legend_below(fig, [rel_ax, hist_ax])
    return _finish(fig, path)


def reliability_grid(
    panels: Mapping[str, tuple[ArrayLike, ArrayLike] | Mapping[str, Any]],
    *,
    n_bins: int = 15,
    title: str = "",
    path: str | Path | None = None,
) -> Figure:
    """Reliability diagrams side by side, one column per panel: ``name -> (probs, target)``,
    or ``name ->`` statistics from :func:`reliability_bins` / :func:`bins_from_sums`; ``title``
    (e.g. the run and the split) above them, ECE in %, the legend below the panels.

    Meant for comparing heads on the same data (feed-forward / introspective / control).
    Saves a PNG to ``path`` when given.
    """
    if len(panels) == 0:
        raise ValueError("reliability_grid needs at least one panel, got an empty mapping")
    all_bins = {
        name: panel if isinstance(panel, Mapping) else reliability_bins(*panel, n_bins)
        for name, panel in panels.items()
    }
    fig = Figure(figsize=(4.0 * len(all_bins), 6.8), layout="constrained")
    axes = fig.subplots(
        2, len(all_bins), sharex=True, sharey="row", height_ratios=[3, 1], squeeze=False
    )
    for column, (name, bins) in enumerate(all_bins.items()):
        _draw(axes[0, column], axes[1, column], bins, name)
    if title:
        fit_suptitle(fig, title)
    _legend_below(fig, [axes[0, 0], axes[1, 0]])
    return _finish(fig, path)
