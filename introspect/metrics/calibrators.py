"""Post-hoc calibrators beyond temperature scaling, and class-wise and equal-mass ECE.

Each calibrator is fitted on held-out logits and labels (``fit(logits, labels) -> self``) and
maps new logits to calibrated probabilities (``calibrator(logits) -> probs``):

* :class:`VectorScaling` — ``softmax(w ⊙ z + b)`` (Guo et al., 2017);
* :class:`MatrixScaling` — ``softmax(W z + b)`` (Guo et al., 2017);
* :class:`DirichletCalibration` — ``softmax(W log softmax(z) + b)``, optionally with the
  off-diagonal and intercept (ODIR) penalty (Kull et al., 2019);
* :class:`IsotonicOneVsRest` — one isotonic map per class on its softmax probability,
  renormalized (Zadrozny & Elkan, 2002).

The parametric ones minimize the mean negative log-likelihood (plus the penalty), a convex
objective, in float64 by damped Newton steps.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.isotonic import IsotonicRegression

from introspect.metrics.calibration import AdaptiveCalibrationError

__all__ = [
    "DirichletCalibration",
    "IsotonicOneVsRest",
    "MatrixScaling",
    "VectorScaling",
    "adaptive_ece",
    "classwise_ece",
]


def _check(logits: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (n, classes >= 2), got {tuple(logits.shape)}")
    if not torch.isfinite(logits).all():
        raise ValueError("logits must be finite")
    if labels is not None:
        if labels.shape != logits.shape[:1]:
            raise ValueError(f"labels must be ({logits.shape[0]},), got {tuple(labels.shape)}")
        if labels.min() < 0 or labels.max() >= logits.shape[1]:
            raise ValueError(f"labels must lie in [0, {logits.shape[1]})")


class _Parametric:
    """Shared fit of a calibration map linear in its parameters ``θ`` ``(classes, m)``: the
    calibrated logit of class ``a`` is ``Σ_m θ[a, m] · F[i, a, m]`` for a design ``F`` built
    from the logits; at most ``max_iter`` Newton steps with exact gradient and Hessian."""

    def __init__(self, max_iter: int = 100) -> None:
        self.max_iter = max_iter
        self.theta: torch.Tensor | None = None

    def _design(self, logits: torch.Tensor) -> torch.Tensor:
        """``F`` ``(n, classes, m)`` of float64 logits ``(n, classes)``."""
        raise NotImplementedError

    def _init(self, classes: int) -> torch.Tensor:
        raise NotImplementedError

    def _penalty(self, classes: int) -> torch.Tensor:
        """Weights ``ρ`` ``(classes, m)`` of the quadratic penalty ``Σ ρ θ²``."""
        return torch.zeros_like(self._init(classes))

    def fit(self, logits: torch.Tensor, labels: torch.Tensor) -> _Parametric:
        """Fit on logits ``(n, classes)`` and labels ``(n,)``; returns ``self``."""
        _check(logits, labels)
        design = self._design(logits.detach().double())
        n, k, m = design.shape
        onehot = F.one_hot(labels.long(), k).double()
        rho = self._penalty(k)
        theta = self._init(k)

        def objective(theta: torch.Tensor) -> tuple[float, torch.Tensor]:
            z = torch.einsum("iam,am->ia", design, theta)
            nll = -(torch.log_softmax(z, dim=1) * onehot).sum() / n
            return float(nll + (rho * theta**2).sum()), torch.softmax(z, dim=1)

        value, probs = objective(theta)
        for _ in range(self.max_iter):
            grad = torch.einsum("ia,iam->am", probs - onehot, design) / n + 2 * rho * theta
            if float(grad.abs().max()) < 1e-10:
                break
            # Hessian of the mean NLL: Σ_i F_iᵀ (diag p_i − p_i p_iᵀ) F_i / n, plus the penalty.
            hessian = torch.block_diag(*torch.einsum("ia,iam,ial->aml", probs, design, design))
            pf = torch.einsum("ia,iam->iam", probs, design).reshape(n, k * m)
            hessian = (hessian - pf.T @ pf) / n + torch.diag(2 * rho.reshape(-1))
            # The pseudo-inverse skips the directions softmax is invariant to.
            eigval, eigvec = torch.linalg.eigh(hessian)
            keep = eigval > eigval.max() * 1e-12
            g = grad.reshape(-1)
            step = (eigvec[:, keep] @ ((eigvec[:, keep].T @ g) / eigval[keep])).reshape(k, m)
            decrease, t = float(g @ step.reshape(-1)), 1.0
            while t > 1e-10:  # backtracking (Armijo)
                new_value, new_probs = objective(theta - t * step)
                if new_value <= value - 1e-4 * t * decrease:
                    break
                t /= 2
            else:
                break
            theta, value, probs = theta - t * step, new_value, new_probs
        self.theta = theta
        return self

    def logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated logits ``(n, classes)`` (float64) of ``logits``."""
        if self.theta is None:
            raise RuntimeError("call fit(logits, labels) first")
        _check(logits)
        return torch.einsum("iam,am->ia", self._design(logits.detach().double()), self.theta)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities ``(n, classes)`` (float64) of ``logits``."""
        return torch.softmax(self.logits(logits), dim=1)


class VectorScaling(_Parametric):
    """``softmax(w ⊙ z + b)``: one scale and one offset per class (``theta[:, 0]`` = ``w``,
    ``theta[:, 1]`` = ``b``)."""

    def _design(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.stack([logits, torch.ones_like(logits)], dim=2)

    def _init(self, classes: int) -> torch.Tensor:
        theta = torch.zeros(classes, 2, dtype=torch.float64)
        theta[:, 0] = 1.0
        return theta


class MatrixScaling(_Parametric):
    """``softmax(W z + b)``: a full affine map of the logits (``theta`` = ``[W | b]``)."""

    def _inputs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def _design(self, logits: torch.Tensor) -> torch.Tensor:
        x = self._inputs(logits)
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        return x[:, None, :].expand(-1, logits.shape[1], -1)

    def _init(self, classes: int) -> torch.Tensor:
        return torch.cat(
            [torch.eye(classes, dtype=torch.float64), torch.zeros(classes, 1, dtype=torch.float64)],
            dim=1,
        )


class DirichletCalibration(MatrixScaling):
    """``softmax(W log p + b)`` with ``p = softmax(z)``. ``off_diagonal`` and ``intercept``
    weigh the ODIR penalty ``λ_od Σ_{i≠j} W_ij² / (k(k−1)) + λ_b Σ b_j² / k`` (0: none)."""

    def __init__(
        self, off_diagonal: float = 0.0, intercept: float = 0.0, max_iter: int = 100
    ) -> None:
        super().__init__(max_iter)
        if off_diagonal < 0 or intercept < 0:
            raise ValueError("off_diagonal and intercept must be non-negative")
        self.off_diagonal = off_diagonal
        self.intercept = intercept

    def _inputs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits, dim=1)

    def _penalty(self, classes: int) -> torch.Tensor:
        k = classes
        rho = torch.full((k, k + 1), self.off_diagonal / (k * (k - 1)), dtype=torch.float64)
        rho.diagonal().zero_()
        rho[:, k] = self.intercept / k
        return rho


class IsotonicOneVsRest:
    """One non-decreasing map per class from its softmax probability to the frequency of that
    class, then renormalized over classes (a row mapped to all zeros becomes uniform)."""

    def __init__(self) -> None:
        self.maps: list[IsotonicRegression] = []

    def fit(self, logits: torch.Tensor, labels: torch.Tensor) -> IsotonicOneVsRest:
        """Fit on logits ``(n, classes)`` and labels ``(n,)``; returns ``self``."""
        _check(logits, labels)
        probs = torch.softmax(logits.detach().double(), dim=1).cpu().numpy()
        y = labels.cpu().numpy()
        self.maps = [
            IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
                probs[:, c], (y == c).astype(np.float64)
            )
            for c in range(probs.shape[1])
        ]
        return self

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities ``(n, classes)`` (float64) of ``logits``."""
        if not self.maps:
            raise RuntimeError("call fit(logits, labels) first")
        _check(logits)
        if logits.shape[1] != len(self.maps):
            raise ValueError(f"logits must have {len(self.maps)} classes")
        probs = torch.softmax(logits.detach().double(), dim=1).cpu().numpy()
        out = np.stack([m.predict(probs[:, c]) for c, m in enumerate(self.maps)], axis=1)
        total = out.sum(axis=1, keepdims=True)
        out = np.where(total > 0, out / np.where(total > 0, total, 1.0), 1.0 / out.shape[1])
        return torch.from_numpy(out)


def _probs_labels(probs: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs.detach().cpu().double() if torch.is_tensor(probs) else probs, float)
    y = np.asarray(labels.detach().cpu() if torch.is_tensor(labels) else labels).astype(np.int64)
    if p.ndim != 2 or y.shape != p.shape[:1] or p.shape[0] == 0:
        raise ValueError(f"probs must be (n, classes) and labels (n,), got {p.shape}, {y.shape}")
    return p, y


def _binned_gap(conf: np.ndarray, hit: np.ndarray, bins: np.ndarray, n_bins: int) -> float:
    """Σ_b |Σ_{i∈b} (hit_i − conf_i)| / n."""
    gap = np.bincount(bins, weights=hit - conf, minlength=n_bins)
    return float(np.abs(gap).sum() / conf.size)


def classwise_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Class-wise ECE: the mean over classes ``c`` of the equal-width-binned (``n_bins`` bins
    on ``[0, 1]``) gap between ``p_c`` and the frequency of class ``c`` (Kull et al., 2019)."""
    p, y = _probs_labels(probs, labels)
    total = 0.0
    for c in range(p.shape[1]):
        bins = np.minimum((p[:, c] * n_bins).astype(np.int64), n_bins - 1)
        total += _binned_gap(p[:, c], (y == c).astype(np.float64), bins, n_bins)
    return total / p.shape[1]


def adaptive_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Equal-mass ECE of the top-class confidence over ``n_bins`` bins (the functional form of
    :class:`introspect.metrics.AdaptiveCalibrationError`)."""
    p, y = _probs_labels(probs, labels)
    metric = AdaptiveCalibrationError(n_bins=n_bins)
    metric.update(torch.from_numpy(p), torch.from_numpy(y))
    return float(metric.compute())
