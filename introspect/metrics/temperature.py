"""Temperature scaling (Guo et al. 2017): one positive scalar ``T`` dividing a classifier's
logits, fitted by minimizing the negative log-likelihood on held-out data.

Dividing logits by ``T`` never changes the argmax, so a tempered classifier keeps its
predictions (and accuracy) and changes only its confidences.

The fit is exact up to floating point: with ``β = 1/T`` the NLL
``mean_i(logsumexp(β z_i) − β z_{i,y_i})`` is convex in ``β`` (a log-sum-exp of functions linear
in ``β``), with derivative ``mean_i(E_{softmax(β z_i)}[z_i] − z_{i,y_i})`` and second derivative
``mean_i Var_{softmax(β z_i)}[z_i] ≥ 0``. Its minimum is where the derivative crosses zero,
found by Newton steps kept inside a shrinking bracket (bisection when a step leaves it).
"""

from __future__ import annotations

import math

import numpy as np
import torch

# Temperatures are searched in [T_MIN, T_MAX]; an optimum beyond is clamped to the bound.
T_MIN = 1e-2
T_MAX = 1e2


def _check(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError("logits and labels must be torch tensors")
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(
            f"logits must have shape (samples, classes) with at least 2 classes, got "
            f"{tuple(logits.shape)}"
        )
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"labels must have shape ({logits.shape[0]},) to match the logits, got "
            f"{tuple(labels.shape)}"
        )
    if logits.shape[0] == 0:
        raise ValueError("fitting a temperature needs at least one sample, got none")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got {labels.dtype}")
    if int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]:
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got values outside")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("logits must be finite (no NaN or infinity)")


def temperature_nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of ``softmax(logits / temperature)`` at ``labels``."""
    _check(logits, labels)
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = logits.detach().to(torch.float64) / temperature
    picked = z.gather(1, labels.long()[:, None])[:, 0]
    return float((torch.logsumexp(z, 1) - picked).mean())


def fit_temperature(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    t_min: float = T_MIN,
    t_max: float = T_MAX,
    rtol: float = 1e-10,
    max_iter: int = 200,
) -> float:
    """The temperature ``T > 0`` minimizing the NLL of ``softmax(logits / T)`` at ``labels``.

    ``logits`` ``(n, N)`` and ``labels`` ``(n,)`` class indices, on any device (computed in
    float64). The optimum is searched in ``[t_min, t_max]``; when the NLL keeps falling beyond a
    bound (e.g. every sample correct with a margin: sharper is always better) that bound is
    returned. Raises ``ValueError``/``TypeError`` on malformed inputs.
    """
    _check(logits, labels)
    if not 0 < t_min < t_max:
        raise ValueError(f"need 0 < t_min < t_max, got t_min={t_min}, t_max={t_max}")
    # numpy on the CPU: small elementwise work that torch's intra-op threads only slow down.
    z = logits.detach().to("cpu", torch.float64).numpy()
    z = z - z.max(axis=1, keepdims=True)  # shift-invariant; exp(beta * z) <= 1 for beta > 0
    target = z[np.arange(len(z)), labels.detach().cpu().numpy()]

    def derivatives(beta: float) -> tuple[float, float]:
        e = np.exp(beta * z)
        s0 = e.sum(axis=1)
        ez = e * z
        mean = ez.sum(axis=1) / s0
        var = (ez * z).sum(axis=1) / s0 - mean * mean
        return float((mean - target).mean()), float(np.maximum(var, 0.0).mean())

    lo, hi = 1.0 / t_max, 1.0 / t_min  # bracket on beta = 1/T
    d_lo, _ = derivatives(lo)
    if d_lo >= 0:  # NLL increasing over the whole range: the largest temperature
        return t_max
    d_hi, _ = derivatives(hi)
    if d_hi <= 0:  # NLL decreasing over the whole range: the smallest temperature
        return t_min
    beta = min(max(1.0, lo), hi)
    for _ in range(max_iter):
        d, curvature = derivatives(beta)
        if d == 0:
            break
        if d < 0:
            lo = beta
        else:
            hi = beta
        step = d / curvature if curvature > 0 else math.inf
        candidate = beta - step
        if not lo < candidate < hi:
            candidate = 0.5 * (lo + hi)  # the Newton step left the bracket: bisect
        if abs(candidate - beta) <= rtol * beta or hi - lo <= rtol * beta:
            beta = candidate
            break
        beta = candidate
    return 1.0 / beta


def temper(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature``: the logits of the tempered classifier (same argmax)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return logits / temperature
