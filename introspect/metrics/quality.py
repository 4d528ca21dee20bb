"""Image-quality agreement metrics: outlier ratio, RMSE, PLCC, SRCC and KRCC.

Each takes ``(predicted, target, ...)`` (1-D array-likes or tensors of equal length, at least
two finite values) and returns a float. ``rmse``, ``plcc`` and ``outlier_ratio`` first map the
predictions to the target scale with a monotonic logistic fitted by least squares
(``mapping="logistic5"``, Sheikh et al. 2006: ``b1 (1/2 - 1/(1 + exp(b2 (x - b3)))) + b4 x + b5``;
``"logistic4"``, VQEG: ``(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2``; or ``"none"``), as is
standard in IQA; SRCC and KRCC are invariant to monotonic maps and take the raw predictions.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

MAPPINGS = ("logistic5", "logistic4", "none")


def _vector(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 2 and 1 in array.shape:  # a column or row vector
        array = array.reshape(-1)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds non-finite values")
    return array


def _pair(predicted: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    p, t = _vector(predicted, "predicted"), _vector(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"predicted has {p.size} values but target has {t.size}")
    if p.size < 2:
        raise ValueError("need at least two scores")
    return p, t


def _logistic5(x: np.ndarray, b1: float, b2: float, b3: float, b4: float, b5: float) -> np.ndarray:
    z = np.clip(b2 * (x - b3), -500.0, 500.0)
    return b1 * (0.5 - 1.0 / (1.0 + np.exp(z))) + b4 * x + b5


def _logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    z = np.clip(-(x - b3) / max(abs(b4), 1e-12), -500.0, 500.0)
    return (b1 - b2) / (1.0 + np.exp(z)) + b2


def logistic_mapping(predicted: Any, target: Any, mapping: str = "logistic5") -> np.ndarray:
    """``predicted`` mapped to the scale of ``target`` by the fitted ``mapping`` (float64).

    Least squares from several start points (the line, and sigmoids of a few steepnesses
    spanning the targets' range, rising or falling with the predictions); the best fit wins,
    and a start point stands in for any fit that does not converge.
    """
    from scipy.optimize import curve_fit

    p, t = _pair(predicted, target)
    if mapping not in MAPPINGS:
        raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")
    if mapping == "none" or np.ptp(p) == 0:
        return p.copy()
    scale, centre = float(np.std(p)), float(np.median(p))
    rising = _pearson(p, t) >= 0 if np.ptp(t) > 0 else True
    span = float(np.ptp(t)) * (1.0 if rising else -1.0)
    steepness = (0.5, 1.0, 3.0, 10.0)
    if mapping == "logistic5":
        slope, intercept = np.polyfit(p, t, 1)
        starts = [[0.0, 1.0 / scale, centre, float(slope), float(intercept)]]
        starts += [[span, s / scale, centre, 0.0, float(np.mean(t))] for s in steepness]
        fn: Any = _logistic5
    else:
        high, low = (np.max(t), np.min(t)) if rising else (np.min(t), np.max(t))
        starts = [[float(high), float(low), centre, scale / s] for s in steepness]
        fn = _logistic4
    best, best_sse = None, np.inf
    for start in starts:
        try:
            with warnings.catch_warnings():  # an inestimable covariance is irrelevant here
                warnings.simplefilter("ignore")
                params, _ = curve_fit(fn, p, t, p0=start, maxfev=20000)
        except (RuntimeError, ValueError):
            params = start
        mapped = fn(p, *params)
        sse = float(np.sum((mapped - t) ** 2))
        if np.all(np.isfinite(mapped)) and sse < best_sse:
            best, best_sse = mapped, sse
    assert best is not None  # the linear start (5) or the plain sigmoid (4) is always finite
    return np.asarray(best, dtype=np.float64)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt((xc * xc).sum() * (yc * yc).sum())
    return float((xc * yc).sum() / denom) if denom > 0 else float("nan")


def plcc(predicted: Any, target: Any, *, mapping: str = "logistic5") -> float:
    """Pearson linear correlation between the mapped predictions and the targets."""
    p, t = _pair(predicted, target)
    return _pearson(logistic_mapping(p, t, mapping), t)


def rmse(predicted: Any, target: Any, *, mapping: str = "logistic5") -> float:
    """Root mean square error of the mapped predictions, in target units."""
    p, t = _pair(predicted, target)
    return float(np.sqrt(np.mean((logistic_mapping(p, t, mapping) - t) ** 2)))


def outlier_ratio(
    predicted: Any,
    target: Any,
    std: Any,
    *,
    k: float = 2.0,
    mapping: str = "logistic5",
) -> float:
    """Fraction of images whose mapped prediction lies more than ``k`` standard deviations of
    the target score away from it (VQEG). ``std`` is one standard deviation per image (the
    spread of the opinion scores) or one value for all images."""
    p, t = _pair(predicted, target)
    spread = np.broadcast_to(np.asarray(std, dtype=np.float64), t.shape)
    if np.any(spread < 0) or not np.all(np.isfinite(spread)):
        raise ValueError("std must be finite and non-negative")
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    error = np.abs(logistic_mapping(p, t, mapping) - t)
    return float(np.mean(error > k * spread))


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_x)) + 1]
    ends = np.r_[starts[1:], x.size]
    average = (starts + ends + 1) / 2.0  # mean of 1-based positions start+1 .. end
    ranks = np.empty_like(x)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def srcc(predicted: Any, target: Any) -> float:
    """Spearman rank correlation (Pearson correlation of the tie-averaged ranks)."""
    p, t = _pair(predicted, target)
    return _pearson(_ranks(p), _ranks(t))


def krcc(predicted: Any, target: Any, *, chunk: int = 1024) -> float:
    """Kendall rank correlation, tau-b (ties in either variable handled), over all pairs."""
    p, t = _pair(predicted, target)
    n = p.size
    concordance = 0.0
    pairs_p = pairs_t = 0.0
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        sp = np.sign(p[rows, None] - p[None, :])
        st = np.sign(t[rows, None] - t[None, :])
        concordance += float((sp * st).sum())
        pairs_p += float(np.abs(sp).sum())
        pairs_t += float(np.abs(st).sum())
    denom = np.sqrt(pairs_p * pairs_t)
    return concordance / denom if denom > 0 else float("nan")
