"""Split-conformal prediction sets for classification: THR (LAC), APS and RAPS.

Calibrated on held-out softmax probabilities and labels, a predictor returns for every new
input the set of classes whose non-conformity score is at most the calibrated quantile; on
exchangeable data the set holds the true label with probability at least ``1 − alpha``
(Vovk et al., 2005; Sadinle et al., 2019 for THR; Romano et al., 2020 for APS; Angelopoulos
et al., 2021 for RAPS).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

__all__ = [
    "SplitConformal",
    "conformal_quantile",
    "conformal_scores",
    "set_coverage",
    "set_size",
]

Method = Literal["thr", "aps", "raps"]
METHODS: tuple[str, ...] = ("thr", "aps", "raps")


def _check_probs(probs: torch.Tensor) -> None:
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must be (n, classes) with classes >= 2, got {tuple(probs.shape)}")


def conformal_scores(
    probs: torch.Tensor,
    method: Method = "aps",
    *,
    noise: torch.Tensor | None = None,
    k_reg: int = 1,
    lam: float = 0.0,
) -> torch.Tensor:
    """Non-conformity score of every class, ``(n, classes)``, from probabilities ``(n, classes)``.

    ``thr``: ``1 − p_c``. ``aps``: the probability mass of the classes ranked at or above ``c``
    (descending probability), less ``noise · p_c`` when ``noise`` ``(n,)`` in ``[0, 1)`` is
    given (the randomized score). ``raps``: the APS score plus ``lam · max(0, rank(c) − k_reg)``
    with 1-based ranks."""
    _check_probs(probs)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "thr":
        return 1.0 - probs
    if k_reg < 0 or lam < 0 or not math.isfinite(lam):
        raise ValueError(f"k_reg and lam must be non-negative, got {k_reg} and {lam}")
    ordered, order = torch.sort(probs, dim=1, descending=True, stable=True)
    cumulative = torch.cumsum(ordered, dim=1)
    if noise is not None:
        if noise.shape != probs.shape[:1]:
            raise ValueError(f"noise must be ({probs.shape[0]},), got {tuple(noise.shape)}")
        cumulative = cumulative - noise[:, None].to(probs.dtype) * ordered
    if method == "raps":
        ranks = torch.arange(1, probs.shape[1] + 1, dtype=probs.dtype, device=probs.device)
        cumulative = cumulative + lam * (ranks - k_reg).clamp(min=0)
    return torch.empty_like(cumulative).scatter_(1, order, cumulative)


def conformal_quantile(scores: torch.Tensor, alpha: float) -> float:
    """The ``ceil((n + 1)(1 − alpha))``-th smallest of the ``n`` calibration scores (``inf``
    when that rank exceeds ``n``): the threshold of the finite-sample coverage guarantee."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    scores = scores.reshape(-1)
    n = scores.numel()
    if n == 0:
        raise ValueError("the calibration set is empty")
    rank = math.ceil((n + 1) * (1.0 - alpha) - 1e-9)
    if rank > n:
        return math.inf
    return float(torch.sort(scores).values[rank - 1])


def set_coverage(sets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per input, whether its set ``(n, classes)`` (booleans) holds its label: ``(n,)`` floats."""
    return sets.gather(1, labels.reshape(-1, 1).long()).squeeze(1).to(torch.float64)


def set_size(sets: torch.Tensor) -> torch.Tensor:
    """Per input, the number of classes in its set: ``(n,)`` floats."""
    return sets.sum(dim=1).to(torch.float64)


class SplitConformal:
    """A split-conformal classifier: :meth:`fit` on calibration probabilities and labels at
    level ``alpha``, then :meth:`predict` boolean sets ``(n, classes)`` of new inputs.

    ``randomized`` draws one uniform ``U`` per input (seeded by ``seed``) for APS/RAPS.
    ``nonempty`` adds the most probable class to any empty set (coverage only grows).
    """

    def __init__(
        self,
        method: Method = "aps",
        alpha: float = 0.1,
        *,
        randomized: bool = False,
        k_reg: int = 1,
        lam: float = 0.0,
        nonempty: bool = True,
        seed: int = 0,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.method: Method = method
        self.alpha = alpha
        self.randomized = randomized and method != "thr"
        self.k_reg = k_reg
        self.lam = lam
        self.nonempty = nonempty
        self.generator = torch.Generator().manual_seed(seed)
        self.quantile: float | None = None

    def _noise(self, n: int, dtype: torch.dtype) -> torch.Tensor | None:
        if not self.randomized:
            return None
        return torch.rand(n, generator=self.generator, dtype=torch.float64).to(dtype)

    def scores(self, probs: torch.Tensor) -> torch.Tensor:
        """Every class's score of ``probs`` ``(n, classes)`` (fresh noise if randomized)."""
        return conformal_scores(
            probs,
            self.method,
            noise=self._noise(probs.shape[0], probs.dtype),
            k_reg=self.k_reg,
            lam=self.lam,
        )

    def fit(self, probs: torch.Tensor, labels: torch.Tensor) -> SplitConformal:
        """Calibrate the threshold on probabilities ``(n, classes)`` and labels ``(n,)``."""
        _check_probs(probs)
        if labels.shape != probs.shape[:1]:
            raise ValueError(f"labels must be ({probs.shape[0]},), got {tuple(labels.shape)}")
        true = self.scores(probs).gather(1, labels.reshape(-1, 1).long()).squeeze(1)
        self.quantile = conformal_quantile(true, self.alpha)
        return self

    def predict(self, probs: torch.Tensor) -> torch.Tensor:
        """Boolean prediction sets ``(n, classes)`` of ``probs``; needs :meth:`fit` first."""
        if self.quantile is None:
            raise RuntimeError("call fit(probs, labels) before predict")
        sets = self.scores(probs) <= self.quantile
        if self.nonempty:
            top = probs.argmax(dim=1, keepdim=True)
            empty = ~sets.any(dim=1, keepdim=True)
            sets = sets | (empty & torch.zeros_like(sets).scatter_(1, top, True))
        return sets
