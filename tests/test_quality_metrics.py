"""Image-quality metrics against scipy.stats / scipy.optimize references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from introspect.metrics import krcc, logistic_mapping, outlier_ratio, plcc, rmse, srcc

stats = pytest.importorskip("scipy.stats")
optimize = pytest.importorskip("scipy.optimize")


def _scores(seed: int, n: int = 200, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = rng.uniform(0, 9, n)
    predicted = 1 / (1 + np.exp(-(target - 4.5))) + rng.normal(0, 0.15, n)
    if ties:
        predicted, target = np.round(predicted, 1), np.round(target)
    return predicted, target


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_rank_correlations_match_scipy(seed: int, ties: bool) -> None:
    p, t = _scores(seed, ties=ties)
    assert srcc(p, t) == pytest.approx(stats.spearmanr(p, t).statistic, abs=1e-12)
    assert krcc(p, t, chunk=37) == pytest.approx(stats.kendalltau(p, t).statistic, abs=1e-12)
    assert krcc(torch.tensor(p), torch.tensor(t)) == pytest.approx(
        stats.kendalltau(p, t).statistic, abs=1e-12
    )


def test_plcc_without_mapping_is_pearson() -> None:
    p, t = _scores(2)
    assert plcc(p, t, mapping="none") == pytest.approx(stats.pearsonr(p, t).statistic, abs=1e-12)
    assert rmse(p, t, mapping="none") == pytest.approx(np.sqrt(np.mean((p - t) ** 2)))


def _reference_fit(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    def f(x, b1, b2, b3, b4, b5):
        return b1 * (0.5 - 1 / (1 + np.exp(np.clip(b2 * (x - b3), -500, 500)))) + b4 * x + b5

    best = None
    for b2 in (1.0, 3.0, 10.0, 30.0):  # several starts: the global least-squares optimum
        try:
            params, _ = optimize.curve_fit(
                f, p, t, p0=[np.ptp(t), b2, np.median(p), 0.0, t.mean()], maxfev=50000
            )
        except RuntimeError:
            continue
        sse = np.sum((f(p, *params) - t) ** 2)
        if best is None or sse < best[0]:
            best = (sse, f(p, *params))
    assert best is not None
    return best[1]


@pytest.mark.parametrize("seed", [3, 4])
def test_logistic5_reaches_the_least_squares_optimum(seed: int) -> None:
    p, t = _scores(seed)
    reference = _reference_fit(p, t)
    mapped = logistic_mapping(p, t, "logistic5")
    # The fitted map is at least as good as an independent multi-start fit, and the metrics
    # are scipy's statistics of that map.
    assert np.mean((mapped - t) ** 2) <= np.mean((reference - t) ** 2) * (1 + 1e-6)
    assert plcc(p, t) == pytest.approx(stats.pearsonr(mapped, t).statistic, abs=1e-12)
    assert plcc(p, t) > stats.pearsonr(p, t).statistic  # the data are logistic, not linear
    assert rmse(p, t) == pytest.approx(np.sqrt(np.mean((mapped - t) ** 2)))


def test_logistic4_recovers_an_exact_decreasing_logistic() -> None:
    x = np.linspace(-3, 3, 101)
    t = (1.0 - 8.0) / (1 + np.exp(-(x - 0.5) / 0.7)) + 8.0  # falls from 8 to 1
    assert rmse(x, t, mapping="logistic4") < 1e-6
    assert plcc(x, t, mapping="logistic4") == pytest.approx(1.0, abs=1e-9)
    assert plcc(x, t, mapping="none") < 0.99


def test_outlier_ratio_counts_errors_beyond_k_std() -> None:
    t = np.arange(10, dtype=float)
    p = t.copy()
    p[[2, 7]] += [3.0, -0.5]
    std = np.full(10, 0.5)
    # Without mapping: |error| > 2 * 0.5 only for image 2.
    assert outlier_ratio(p, t, std, mapping="none") == pytest.approx(0.1)
    assert outlier_ratio(p, t, 0.2, mapping="none") == pytest.approx(0.2)
    assert outlier_ratio(p, t, std, k=10, mapping="none") == 0.0
    errors = np.abs(logistic_mapping(p, t) - t)
    assert outlier_ratio(p, t, std) == pytest.approx(np.mean(errors > 1.0))


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="values but target"):
        srcc([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="non-finite"):
        plcc([1, np.nan, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="mapping"):
        rmse([1, 2, 3], [1, 2, 3], mapping="cubic")
    with pytest.raises(ValueError, match="std"):
        outlier_ratio([1, 2, 3], [1, 2, 3], -1.0)
