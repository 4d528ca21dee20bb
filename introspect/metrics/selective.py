"""Selective classification: risk–coverage curves, AURC, AUGRC and selective risk.

A selective classifier answers only on the inputs whose confidence is at least a threshold.
Its *coverage* is the fraction answered, its *selective risk* the error rate among them, and its
*generalized risk* the errors among them divided by all inputs (Traub et al., 2024). Inputs of
equal confidence cannot be separated by a threshold, so a group of tied confidences is one
operating point. NumPy only (matplotlib imported on first figure): no torch import.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "RiskCoverage",
    "aurc",
    "augrc",
    "risk_coverage_curve",
    "risk_coverage_figure",
    "selective_risk",
]

Convention = Literal["exact", "trapezoid"]


@dataclass(frozen=True)
class RiskCoverage:
    """Operating points of a selective classifier, from the most confident group down.

    ``coverage[j]``: fraction of inputs answered at the ``j``-th threshold; ``risk[j]``: error
    rate among them; ``generalized_risk[j]``: their errors divided by all inputs;
    ``threshold[j]``: the confidence of the last group admitted."""

    coverage: np.ndarray
    risk: np.ndarray
    generalized_risk: np.ndarray
    threshold: np.ndarray


def _inputs(confidence: ArrayLike, correct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    ok = np.asarray(correct).reshape(-1)
    if conf.shape != ok.shape or conf.size == 0:
        raise ValueError(
            f"confidence and correct must be non-empty and of one length, got {conf.size} "
            f"and {ok.size}"
        )
    if not np.isfinite(conf).all():
        raise ValueError("confidence must be finite")
    if not np.isin(ok, (0, 1)).all():
        raise ValueError("correct must hold 0/1 or booleans")
    return conf, ok.astype(np.float64)


def _groups(conf: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per tie group, most confident first: its size, cumulative count, cumulative errors."""
    order = np.argsort(-conf, kind="stable")
    conf, err = conf[order], err[order]
    ends = np.flatnonzero(np.r_[conf[1:] != conf[:-1], True])
    counts = ends + 1
    errors = np.cumsum(err)[ends]
    sizes = np.diff(np.r_[0, counts])
    return sizes, counts, errors


def risk_coverage_curve(confidence: ArrayLike, correct: ArrayLike) -> RiskCoverage:
    """The risk–coverage curve of the confidences ``(n,)`` and 0/1 correctness ``(n,)``."""
    conf, ok = _inputs(confidence, correct)
    n = conf.size
    sizes, counts, errors = _groups(conf, 1.0 - ok)
    ends = np.sort(conf)[::-1][counts - 1]
    return RiskCoverage(counts / n, errors / counts, errors / n, ends)


def _sorted_errors(conf: np.ndarray, ok: np.ndarray) -> np.ndarray:
    return (1.0 - ok)[np.argsort(-conf, kind="stable")]


def _area(
    confidence: ArrayLike, correct: ArrayLike, convention: Convention, generalized: bool
) -> float:
    conf, ok = _inputs(confidence, correct)
    n = conf.size
    if convention == "exact":
        sizes, counts, errors = _groups(conf, 1.0 - ok)
        risk = errors / n if generalized else errors / counts
        return float(np.sum(sizes * risk) / n)
    if convention == "trapezoid":
        if n < 2:
            return float("nan")
        k = np.arange(1, n + 1)
        risk = np.cumsum(_sorted_errors(conf, ok)) / k
        coverage = k / n
        y = risk * coverage if generalized else risk
        return float(np.trapezoid(y, coverage) / (1.0 - 1.0 / n))
    raise ValueError(f"convention must be 'exact' or 'trapezoid', got {convention!r}")


def aurc(confidence: ArrayLike, correct: ArrayLike, *, convention: Convention = "exact") -> float:
    """Area under the risk–coverage curve (lower is better), a fraction in ``[0, 1]``.

    ``"exact"``: the mean, over inputs, of the selective risk at the operating point that
    first admits the input (tied confidences share one point). ``"trapezoid"``: the trapezoid
    rule over coverages ``1/n … 1``, rescaled by ``1/(1 − 1/n)``, ignoring ties (the convention
    of torch-uncertainty's ``AURC``)."""
    return _area(confidence, correct, convention, generalized=False)


def augrc(confidence: ArrayLike, correct: ArrayLike, *, convention: Convention = "exact") -> float:
    """Area under the generalized risk–coverage curve (Traub et al., 2024; lower is better).

    As :func:`aurc`, with the generalized risk (errors admitted over all inputs) in place of
    the selective risk; ``"trapezoid"`` is torch-uncertainty's ``AUGRC`` convention."""
    return _area(confidence, correct, convention, generalized=True)


def selective_risk(confidence: ArrayLike, correct: ArrayLike, coverage: float) -> float:
    """Error rate among the ``ceil(coverage · n)`` most confident inputs (ties in input order)."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    conf, ok = _inputs(confidence, correct)
    k = int(np.ceil(coverage * conf.size - 1e-9))
    return float(_sorted_errors(conf, ok)[:k].mean())


def risk_coverage_figure(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
    path: str | Path | None = None,
    *,
    title: str = "Selective classification",
) -> Figure:
    """Risk against coverage for every named ``(confidence, correct)`` pair (e.g. per head),
    the AURC in each legend entry; the legend sits below the axes. Saved to ``path`` if given."""
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("curves must name at least one (confidence, correct) pair")
    fig = Figure(figsize=(6.0, 4.8), layout="constrained")
    ax = fig.add_subplot()
    for name, (confidence, correct) in curves.items():
        rc = risk_coverage_curve(confidence, correct)
        ax.step(
            np.r_[0.0, rc.coverage] * 100,
            np.r_[rc.risk[0], rc.risk] * 100,
            where="pre",
            label=f"{name} (area under curve {100 * aurc(confidence, correct):.2f})",
        )
    ax.set_xlabel("Coverage: inputs answered (%)")
    ax.set_ylabel("Risk: error rate among answered (%)")
    ax.set_title(title)
    ax.set_xlim(0, 100)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside lower center", ncol=min(2, len(curves)), frameon=False)
    if path is not None:
        fig.savefig(path, dpi=150)
    return fig
