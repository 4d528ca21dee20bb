"""Paired bootstrap confidence intervals of differences between two heads or two detectors.

Every comparison of this project is paired: two heads are evaluated on the same test images,
two detectors score the same in- and out-of-distribution samples. The intervals here resample
those samples (stratified by corruption cell when cells are pooled, and over seeds first when
several runs exist), so the variation both methods share cancels. NumPy only: no torch import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PairedDifference",
    "paired_auroc_difference",
    "paired_ece_difference",
    "paired_ece_differences",
    "paired_mean_difference",
    "verdict",
]

# A stratum with at most this many distinct values is resampled through the multinomial counts
# of its values (exact, and independent of the stratum's size); larger ones by drawn indices.
_MAX_DISTINCT = 256
# Elements drawn at once by the index path (memory bound, ~64 MB of float64).
_CHUNK = 8_000_000


def verdict(low: float, high: float, *, higher_is_better: bool = True) -> str:
    """``better``, ``worse`` or ``no detectable difference``: whether the interval
    ``[low, high]`` of a difference ``A - B`` lies above zero, below it, or covers it."""
    if low > 0:
        return "better" if higher_is_better else "worse"
    if high < 0:
        return "worse" if higher_is_better else "better"
    return "no detectable difference"


@dataclass(frozen=True)
class PairedDifference:
    """A difference ``A - B`` with its bootstrap confidence interval.

    ``estimate`` is the difference on the data as observed; ``low``/``high`` the percentile
    interval at ``level`` from ``resamples`` paired resamples; ``verdict`` reads the interval
    (``better`` when it lies wholly on the good side of zero).
    """

    estimate: float
    low: float
    high: float
    level: float
    resamples: int
    higher_is_better: bool = True

    @property
    def verdict(self) -> str:
        """``better``, ``worse`` or ``no detectable difference`` (see :func:`verdict`)."""
        return verdict(self.low, self.high, higher_is_better=self.higher_is_better)

    def format(self, scale: float = 100.0, digits: int = 2) -> str:
        """E.g. ``+1.23 [+0.41, +2.05]`` (values times ``scale``: points for accuracies)."""
        e, lo, hi = (scale * v for v in (self.estimate, self.low, self.high))
        return f"{e:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _check_level(level: float, resamples: int) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 10:
        raise ValueError(f"resamples must be an integer >= 10, got {resamples!r}")


def _as_labels(values: np.ndarray | None, n: int, name: str) -> np.ndarray:
    """Integer codes ``0..k-1`` of ``values`` (one per sample; all zero when ``None``)."""
    if values is None:
        return np.zeros(n, dtype=np.int64)
    values = np.asarray(values)
    if values.shape != (n,):
        raise ValueError(f"{name} must have one entry per sample ({n}), got shape {values.shape}")
    return np.unique(values, return_inverse=True)[1].reshape(n)


def _stratum_means(rows: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Column means of ``rows`` (n, k) resampled by row with replacement (same n): (resamples, k).

    Rows are resampled whole, so the columns (seeds scored on the same images) stay paired."""
    n = rows.shape[0]
    distinct, counts = np.unique(rows, axis=0, return_counts=True)
    if distinct.shape[0] <= _MAX_DISTINCT:
        # The resampled counts of the distinct rows are multinomial: the same distribution as
        # drawing n row indices, at a cost independent of n.
        return rng.multinomial(n, counts / n, size=resamples) @ distinct / n
    out = np.empty((resamples, rows.shape[1]))
    step = max(1, _CHUNK // (n * rows.shape[1]))
    for start in range(0, resamples, step):
        stop = min(resamples, start + step)
        out[start:stop] = rows[rng.integers(n, size=(stop - start, n))].mean(axis=1)
    return out


def _interval(replicates: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(replicates, [alpha, 1.0 - alpha])
    return float(low), float(high)


def paired_mean_difference(
    a: np.ndarray,
    b: np.ndarray,
    *,
    strata: np.ndarray | None = None,
    resamples: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
    higher_is_better: bool = True,
) -> PairedDifference:
    """The mean of ``a - b`` over paired samples, with a paired percentile bootstrap interval.

    ``a``/``b``: one value per test image for each method (e.g. 1/0 correctness of two heads on
    the same images, or per-image losses), shape ``(n,)``; or ``(seeds, n)`` for several runs
    scored on the same ``n`` images. ``strata``: a label per image (e.g. the corruption cell);
    resampling keeps every stratum's size, so pooled cells are resampled within themselves.
    With several seeds the estimate is the mean over seeds, and every resample draws seeds with
    replacement and then images (hierarchical; one image draw shared by the seeds, since they
    were scored on the same images). Seeded and deterministic.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim not in (1, 2) or a.size == 0:
        raise ValueError(
            f"a and b must have the same shape, (n,) or (seeds, n), got {a.shape} and {b.shape}"
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("a and b must be finite")
    _check_level(level, resamples)
    diff = np.atleast_2d(a - b)  # (seeds, n)
    n_seeds, n = diff.shape
    cells = _as_labels(strata, n, "strata")
    rng = np.random.default_rng(seed)
    per_seed = np.zeros((resamples, n_seeds))  # resampled mean of every seed
    for cell in range(int(cells.max()) + 1):
        rows = diff[:, cells == cell].T  # (n_c, seeds)
        per_seed += rows.shape[0] * _stratum_means(rows, resamples, rng)
    per_seed /= n
    if n_seeds == 1:
        replicates = per_seed[:, 0]
    else:
        picks = rng.integers(n_seeds, size=(resamples, n_seeds))
        replicates = np.take_along_axis(per_seed, picks, axis=1).mean(axis=1)
    low, high = _interval(replicates, level)
    return PairedDifference(
        float(diff.mean()), low, high, level, resamples, higher_is_better=higher_is_better
    )


def _weighted_auroc(
    s_in: np.ndarray, s_out: np.ndarray, w_in: np.ndarray, w_out: np.ndarray
) -> np.ndarray:
    """AUROC (in-distribution = positive, high score = in) of every row of sample weights:
    ``w_in`` (r, n_in) and ``w_out`` (r, n_out) count how often each sample was drawn."""
    order = np.argsort(s_out, kind="stable")
    sorted_out = s_out[order]
    cum = np.zeros((w_out.shape[0], s_out.size + 1))
    np.cumsum(w_out[:, order], axis=1, out=cum[:, 1:])
    below = np.searchsorted(sorted_out, s_in, side="left")
    upto = np.searchsorted(sorted_out, s_in, side="right")
    wins = cum[:, below] + 0.5 * (cum[:, upto] - cum[:, below])
    return (w_in * wins).sum(axis=1) / (w_in.sum(axis=1) * w_out.sum(axis=1))


def _uniform_counts(n: int, rows: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, n) draw counts of n samples resampled with replacement, one row per resample."""
    picks = rng.integers(n, size=(rows, n)) + (np.arange(rows) * n)[:, None]
    return np.bincount(picks.ravel(), minlength=rows * n).reshape(rows, n).astype(np.float64)


def paired_auroc_difference(
    a_in: np.ndarray,
    a_out: np.ndarray,
    b_in: np.ndarray,
    b_out: np.ndarray,
    *,
    resamples: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """AUROC of detector A minus AUROC of detector B on the same samples, with a paired
    bootstrap interval: every resample draws in- and out-of-distribution samples (each set
    keeping its size) and scores both detectors on that one draw.

    ``a_in``/``b_in``: the two detectors' scores of the same in-distribution samples (higher =
    more in-distribution); ``a_out``/``b_out`` likewise for the out-of-distribution samples.
    """
    arrays = [np.asarray(x, dtype=np.float64) for x in (a_in, a_out, b_in, b_out)]
    a_in, a_out, b_in, b_out = arrays
    if a_in.shape != b_in.shape or a_out.shape != b_out.shape:
        raise ValueError("both detectors must score the same samples (shapes differ)")
    if a_in.ndim != 1 or a_out.ndim != 1 or a_in.size == 0 or a_out.size == 0:
        raise ValueError("scores must be non-empty 1-D arrays")
    if not all(np.isfinite(x).all() for x in arrays):
        raise ValueError("scores must be finite")
    _check_level(level, resamples)
    ones_in, ones_out = np.ones((1, a_in.size)), np.ones((1, a_out.size))
    estimate = float(
        _weighted_auroc(a_in, a_out, ones_in, ones_out)[0]
        - _weighted_auroc(b_in, b_out, ones_in, ones_out)[0]
    )
    rng = np.random.default_rng(seed)
    replicates = np.empty(resamples)
    rows = max(1, _CHUNK // (4 * (a_in.size + a_out.size)))
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        w_in = _uniform_counts(a_in.size, stop - start, rng)
        w_out = _uniform_counts(a_out.size, stop - start, rng)
        replicates[start:stop] = _weighted_auroc(a_in, a_out, w_in, w_out) - _weighted_auroc(
            b_in, b_out, w_in, w_out
        )
    low, high = _interval(replicates, level)
    return PairedDifference(estimate, low, high, level, resamples)


def equal_width_bins(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each confidence among ``n_bins`` equal-width bins of ``(0, 1]``, right-closed
    (``b`` with ``b/n_bins < c <= (b+1)/n_bins``; ``c <= 0`` falls in the first bin), the
    binning of ``metrics.calibration.ExpectedCalibrationError``."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)


def _binned_ece(weights: np.ndarray, bins: np.ndarray, gaps: np.ndarray, n_bins: int) -> np.ndarray:
    """ECE of every set of predictions (``bins``, ``gaps`` = confidence - correct: (k, n)) under
    every row of ``weights`` (r, n) (how often each image was drawn): per set, the sum over bins
    of ``|sum of weight * gap|`` over the total weight; (r, k). One matrix product per group of
    sets (their bin-scattered gaps, at most ``_CHUNK`` values)."""
    k, n = bins.shape
    out = np.empty((weights.shape[0], k))
    step = max(1, _CHUNK // (n * n_bins))
    rows = np.arange(n)
    for first in range(0, k, step):
        last = min(k, first + step)
        scattered = np.zeros((n, (last - first) * n_bins))
        for j in range(first, last):
            scattered[rows, (j - first) * n_bins + bins[j]] = gaps[j]
        per_bin = (weights @ scattered).reshape(weights.shape[0], last - first, n_bins)
        out[:, first:last] = np.abs(per_bin).sum(axis=2)
    return out / weights.sum(axis=1, keepdims=True)


def paired_ece_differences(
    confidence: Mapping[str, np.ndarray],
    correct: Mapping[str, np.ndarray],
    pairs: Sequence[tuple[str, str]],
    *,
    strata: np.ndarray | None = None,
    n_bins: int = 15,
    resamples: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[tuple[str, str], PairedDifference]:
    """ECE of head A minus ECE of head B for every pair ``(A, B)`` of ``pairs``, with paired
    percentile bootstrap intervals (lower is better, so ``better`` means A is better calibrated).

    ``confidence[head]``/``correct[head]``: each head's top-1 confidence and 1/0 correctness of
    the same test images, ``(n,)``, or ``(seeds, n)`` for seeds scored on the same images. ECE:
    ``n_bins`` equal-width bins (``equal_width_bins``), ``sum_b |sum_{i in b} (conf_i -
    correct_i)| / n``; with ``strata`` (e.g. corruption cells) the mean over strata of each
    stratum's ECE (the mean over cells a run reports). Every resample draws images with
    replacement (within each stratum, keeping its size) and recomputes every head's ECE on that
    one draw; with several seeds it then draws seeds with replacement (the estimate is the mean
    over seeds).
    Unstratified, with one seed and when the draw fits one chunk, the resamples are
    ``default_rng(seed).integers(n, size=(resamples, n))``, those of ``scipy.stats.bootstrap``.
    """
    _check_level(level, resamples)
    heads = list(dict.fromkeys(h for pair in pairs for h in pair))
    missing = [h for h in heads if h not in confidence or h not in correct]
    if missing:
        raise ValueError(f"no confidence or correctness of heads {missing}")
    conf = {h: np.atleast_2d(np.asarray(confidence[h], dtype=np.float64)) for h in heads}
    hits = {h: np.atleast_2d(np.asarray(correct[h], dtype=np.float64)) for h in heads}
    shape = conf[heads[0]].shape
    if any(conf[h].shape != shape or hits[h].shape != shape for h in heads) or len(shape) != 2:
        raise ValueError("every head needs confidences and correctness of the same images")
    if not all(np.isfinite(conf[h]).all() for h in heads):
        raise ValueError("confidences must be finite")
    n_seeds, n = shape
    # One row per (head, seed): its bin and gap (confidence - correct) on every image.
    bins = np.concatenate([equal_width_bins(conf[h], n_bins) for h in heads])
    gaps = np.concatenate([conf[h] - hits[h] for h in heads])
    cells = _as_labels(strata, n, "strata")
    members = [np.flatnonzero(cells == c) for c in range(int(cells.max()) + 1)]
    parts = [(bins[:, where], gaps[:, where]) for where in members]
    # The mean over strata of each stratum's ECE, as observed and on every resample.
    estimate = sum(_binned_ece(np.ones((1, b.shape[1])), b, g, n_bins) for b, g in parts)
    estimate = (estimate / len(parts)).reshape(len(heads), n_seeds)
    rng = np.random.default_rng(seed)
    replicated = np.zeros((resamples, len(heads) * n_seeds))
    step = max(1, _CHUNK // (4 * max(where.size for where in members)))
    for start in range(0, resamples, step):
        stop = min(resamples, start + step)
        for b, g in parts:
            weights = _uniform_counts(b.shape[1], stop - start, rng)
            replicated[start:stop] += _binned_ece(weights, b, g, n_bins)
    replicated = (replicated / len(parts)).reshape(resamples, len(heads), n_seeds)
    per_seed = {h: replicated[:, i] for i, h in enumerate(heads)}
    estimates = {h: estimate[i] for i, h in enumerate(heads)}
    picks = rng.integers(n_seeds, size=(resamples, n_seeds)) if n_seeds > 1 else None
    out: dict[tuple[str, str], PairedDifference] = {}
    for a, b in pairs:
        diff = per_seed[a] - per_seed[b]
        replicates = (
            diff[:, 0] if picks is None else np.take_along_axis(diff, picks, axis=1).mean(axis=1)
        )
        low, high = _interval(replicates, level)
        point = float((estimates[a] - estimates[b]).mean())
        out[(a, b)] = PairedDifference(point, low, high, level, resamples, higher_is_better=False)
    return out


def paired_ece_difference(
    conf_a: np.ndarray,
    correct_a: np.ndarray,
    conf_b: np.ndarray,
    correct_b: np.ndarray,
    *,
    strata: np.ndarray | None = None,
    n_bins: int = 15,
    resamples: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """ECE of predictions A minus ECE of predictions B on the same images, with a paired
    bootstrap interval (``paired_ece_differences`` of the one pair)."""
    diffs = paired_ece_differences(
        {"a": conf_a, "b": conf_b}, {"a": correct_a, "b": correct_b}, [("a", "b")],
        strata=strata, n_bins=n_bins, resamples=resamples, level=level, seed=seed,
    )  # fmt: skip
    return diffs[("a", "b")]
