"""Paired bootstrap intervals against scipy.stats.bootstrap, closed forms and direct loops."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from introspect.metrics.paired import (
    PairedDifference,
    _weighted_auroc,
    paired_auroc_difference,
    paired_ece_difference,
    paired_ece_differences,
    paired_mean_difference,
    verdict,
)

Z = stats.norm.ppf(0.975)


def _scipy_interval(a: np.ndarray, b: np.ndarray, resamples: int) -> tuple[float, float]:
    result = stats.bootstrap(
        (a, b),
        lambda x, y, axis=-1: (x - y).mean(axis=axis),
        paired=True,
        vectorized=True,
        method="percentile",
        n_resamples=resamples,
        confidence_level=0.95,
        random_state=1,
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


@pytest.mark.parametrize("kind", ["correctness", "continuous"])
def test_interval_agrees_with_scipy_paired_bootstrap(kind: str) -> None:
    rng = np.random.default_rng(0)
    n = 1500
    if kind == "correctness":  # 1/0 of two heads on the same images, correlated
        shared = rng.random(n)
        a, b = (shared < 0.8).astype(float), (shared + 0.1 * rng.random(n) < 0.78).astype(float)
    else:  # per-image losses
        a = rng.gamma(2.0, 1.0, n)
        b = a + rng.normal(0.05, 0.5, n)
    ours = paired_mean_difference(a, b, resamples=40_000, seed=3)
    low, high = _scipy_interval(a, b, 40_000)
    width = high - low
    assert ours.estimate == pytest.approx((a - b).mean(), abs=1e-15)
    # Both are Monte-Carlo estimates of the same percentiles: they agree up to resampling noise.
    assert abs(ours.low - low) < 0.03 * width
    assert abs(ours.high - high) < 0.03 * width


def test_large_sample_interval_is_the_normal_approximation() -> None:
    rng = np.random.default_rng(1)
    n = 200_000
    a = (rng.random(n) < 0.7).astype(float)
    b = (rng.random(n) < 0.69).astype(float)
    d = a - b
    half = Z * d.std() / np.sqrt(n)
    ours = paired_mean_difference(a, b, resamples=20_000)
    assert ours.low == pytest.approx(d.mean() - half, abs=0.03 * half)
    assert ours.high == pytest.approx(d.mean() + half, abs=0.03 * half)


def test_stratified_interval_has_the_stratified_variance() -> None:
    rng = np.random.default_rng(2)
    sizes = [30_000, 50_000, 20_000]
    rates = [(1.0, 0.5), (0.6, 0.62), (0.5, 1.0)]  # cells far apart
    a, b, cells = [], [], []
    for k, (n, (pa, pb)) in enumerate(zip(sizes, rates, strict=True)):
        a.append((rng.random(n) < pa).astype(float))
        b.append((rng.random(n) < pb).astype(float))
        cells.append(np.full(n, k))
    a_all, b_all, c_all = (np.concatenate(x) for x in (a, b, cells))
    total = sum(sizes)
    # Resampling within each cell: Var(mean) = sum_c n_c var_c / N^2 (population variances).
    var = sum(len(x) * (x - y).var() for x, y in zip(a, b, strict=True)) / total**2
    half = Z * np.sqrt(var)
    ours = paired_mean_difference(a_all, b_all, strata=c_all, resamples=20_000)
    mid = (a_all - b_all).mean()
    assert ours.low == pytest.approx(mid - half, abs=0.04 * half)
    assert ours.high == pytest.approx(mid + half, abs=0.04 * half)
    # Pooling the cells without strata overstates the variance (the cells' means differ).
    pooled = paired_mean_difference(a_all, b_all, resamples=20_000)
    assert pooled.high - pooled.low > 1.05 * (ours.high - ours.low)


def test_hierarchical_interval_matches_a_direct_loop_over_seeds_then_images() -> None:
    rng = np.random.default_rng(4)
    seeds, n = 3, 400
    base = rng.random(n)
    a = np.stack([(base + 0.2 * rng.random(n) < 0.8 + 0.03 * s).astype(float) for s in range(3)])
    b = np.stack([(base + 0.2 * rng.random(n) < 0.78).astype(float) for _ in range(seeds)])
    cells = np.repeat([0, 1], n // 2)
    ours = paired_mean_difference(a, b, strata=cells, resamples=20_000, seed=5)

    loop_rng = np.random.default_rng(99)
    d = a - b
    reps = np.empty(20_000)
    halves = [np.flatnonzero(cells == c) for c in (0, 1)]
    for r in range(reps.size):
        picked = loop_rng.integers(seeds, size=seeds)
        images = np.concatenate([loop_rng.choice(h, size=h.size) for h in halves])
        reps[r] = d[picked][:, images].mean()
    low, high = np.quantile(reps, [0.025, 0.975])
    width = high - low
    assert ours.estimate == pytest.approx(d.mean(), abs=1e-15)
    assert abs(ours.low - low) < 0.04 * width
    assert abs(ours.high - high) < 0.04 * width


def test_identical_methods_give_a_zero_interval_and_no_difference() -> None:
    a = (np.random.default_rng(0).random(500) < 0.5).astype(float)
    result = paired_mean_difference(a, a.copy())
    assert (result.estimate, result.low, result.high) == (0.0, 0.0, 0.0)
    assert result.verdict == "no detectable difference"


def test_seeded_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=300), rng.normal(size=300)
    assert paired_mean_difference(a, b, seed=7) == paired_mean_difference(a, b, seed=7)
    assert paired_mean_difference(a, b, seed=7) != paired_mean_difference(a, b, seed=8)


def test_weighted_auroc_equals_sklearn_on_the_repeated_samples() -> None:
    rng = np.random.default_rng(6)
    s_in = np.round(rng.normal(1.0, 1.0, 60), 1)  # rounded: ties inside and across the sets
    s_out = np.round(rng.normal(0.0, 1.0, 45), 1)
    w_in = rng.integers(0, 4, size=(5, 60)).astype(float)
    w_out = rng.integers(0, 4, size=(5, 45)).astype(float)
    ours = _weighted_auroc(s_in, s_out, w_in, w_out)
    for r in range(5):
        xin = np.repeat(s_in, w_in[r].astype(int))
        xout = np.repeat(s_out, w_out[r].astype(int))
        y = np.r_[np.ones(xin.size), np.zeros(xout.size)]
        assert ours[r] == pytest.approx(roc_auc_score(y, np.r_[xin, xout]), abs=1e-12)


def test_auroc_difference_matches_sklearn_and_a_direct_loop() -> None:
    rng = np.random.default_rng(7)
    n_in, n_out = 250, 200
    a_in, a_out = rng.normal(1.2, 1.0, n_in), rng.normal(0.0, 1.0, n_out)
    b_in = a_in + rng.normal(0.0, 0.8, n_in)  # a noisier detector of the same samples
    b_out = a_out + rng.normal(0.0, 0.8, n_out)
    y = np.r_[np.ones(n_in), np.zeros(n_out)]
    exact = roc_auc_score(y, np.r_[a_in, a_out]) - roc_auc_score(y, np.r_[b_in, b_out])
    ours = paired_auroc_difference(a_in, a_out, b_in, b_out, resamples=10_000, seed=1)
    assert ours.estimate == pytest.approx(exact, abs=1e-12)

    def mann_whitney(s_in: np.ndarray, s_out: np.ndarray) -> float:
        ranks = stats.rankdata(np.r_[s_in, s_out])  # ties get their mean rank
        return (ranks[: s_in.size].sum() - s_in.size * (s_in.size + 1) / 2) / (s_in.size * n_out)

    loop_rng = np.random.default_rng(11)
    reps = np.empty(4_000)
    for r in range(reps.size):
        i = loop_rng.integers(n_in, size=n_in)
        o = loop_rng.integers(n_out, size=n_out)
        reps[r] = mann_whitney(a_in[i], a_out[o]) - mann_whitney(b_in[i], b_out[o])
    low, high = np.quantile(reps, [0.025, 0.975])
    width = high - low
    assert abs(ours.low - low) < 0.06 * width
    assert abs(ours.high - high) < 0.06 * width
    # The noisier detector B loses AUROC beyond resampling noise.
    assert ours.verdict == "better"


def test_verdicts_follow_the_interval_and_the_metric_direction() -> None:
    assert verdict(0.1, 0.3) == "better"
    assert verdict(-0.3, -0.1) == "worse"
    assert verdict(-0.1, 0.2) == "no detectable difference"
    ece = PairedDifference(-0.02, -0.03, -0.01, 0.95, 100, higher_is_better=False)
    assert ece.verdict == "better"  # a lower ECE
    assert ece.format() == "-2.00 [-3.00, -1.00]"


@pytest.mark.parametrize(
    ("a", "b", "kwargs", "match"),
    [
        (np.ones(3), np.ones(4), {}, "same shape"),
        (np.array([1.0, np.nan]), np.ones(2), {}, "finite"),
        (np.ones(3), np.ones(3), {"level": 1.0}, "level"),
        (np.ones(3), np.ones(3), {"resamples": 5}, "resamples"),
        (np.ones(3), np.ones(3), {"strata": np.zeros(2)}, "strata"),
    ],
)
def test_bad_input_is_refused(a, b, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        paired_mean_difference(a, b, **kwargs)


def _ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """ECE with right-closed equal-width bins, one bin at a time (plain loop)."""
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (confidence > lo) & (confidence <= hi)
        total += abs((confidence[inside] - correct[inside]).sum())
    return total / len(confidence)


def _two_heads(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    conf_a = rng.uniform(0.1, 1.0, n)
    conf_b = np.clip(conf_a + rng.normal(0.05, 0.1, n), 0.1, 1.0)
    shared = rng.random(n)
    return conf_a, (shared < conf_a).astype(float), conf_b, (shared < 0.9 * conf_b).astype(float)


def test_ece_difference_agrees_with_scipy_on_the_same_resamples() -> None:
    rng = np.random.default_rng(4)
    conf_a, hit_a, conf_b, hit_b = _two_heads(rng, 80)

    def statistic(ca, ya, cb, yb, axis=-1):  # one ECE difference per resample, by the loop
        rows = [np.atleast_2d(x) for x in (ca, ya, cb, yb)]
        return np.array([_ece(*r[:2]) - _ece(*r[2:]) for r in zip(*rows, strict=True)])

    scipy_result = stats.bootstrap(
        (conf_a, hit_a, conf_b, hit_b), statistic, paired=True, vectorized=True,
        method="percentile", n_resamples=999, confidence_level=0.9,
        rng=np.random.default_rng(7),
    )  # fmt: skip
    ours = paired_ece_difference(conf_a, hit_a, conf_b, hit_b, resamples=999, level=0.9, seed=7)
    assert ours.estimate == pytest.approx(_ece(conf_a, hit_a) - _ece(conf_b, hit_b), abs=1e-12)
    # The same resamples (the same generator draws), so the same percentiles.
    assert ours.low == pytest.approx(scipy_result.confidence_interval.low, abs=1e-12)
    assert ours.high == pytest.approx(scipy_result.confidence_interval.high, abs=1e-12)
    assert not ours.higher_is_better


def test_stratified_seeded_ece_difference_matches_a_direct_loop() -> None:
    rng = np.random.default_rng(5)
    seeds, sizes = 2, (30, 20)
    n = sum(sizes)
    parts = [_two_heads(rng, n) for _ in range(seeds)]
    conf_a, hit_a, conf_b, hit_b = (np.stack([p[i] for p in parts]) for i in range(4))
    strata = np.repeat([0, 1], sizes)
    resamples = 200
    got = paired_ece_differences(
        {"a": conf_a, "b": conf_b}, {"a": hit_a, "b": hit_b}, [("a", "b")],
        strata=strata, resamples=resamples, seed=11,
    )[("a", "b")]  # fmt: skip

    # The same draws as a loop: per resample and stratum, image indices; then seeds.
    def cell_mean_ece(conf, hit, index):  # mean over the strata of each stratum's ECE
        return np.mean([_ece(conf[i], hit[i]) for i in index])

    draws = np.random.default_rng(11)
    starts = np.cumsum((0, *sizes))
    index = [[] for _ in range(resamples)]
    for c, size in enumerate(sizes):  # one chunk: every resample's draw of a stratum at once
        picks = draws.integers(size, size=(resamples, size)) + starts[c]
        for r in range(resamples):
            index[r].append(picks[r])
    per_seed = np.array(
        [
            [
                cell_mean_ece(conf_a[s], hit_a[s], index[r])
                - cell_mean_ece(conf_b[s], hit_b[s], index[r])
                for s in range(seeds)
            ]
            for r in range(resamples)
        ]
    )
    seed_picks = draws.integers(seeds, size=(resamples, seeds))
    replicates = np.take_along_axis(per_seed, seed_picks, axis=1).mean(axis=1)
    low, high = np.quantile(replicates, [0.025, 0.975])
    cells = [np.arange(starts[c], starts[c + 1]) for c in range(len(sizes))]
    observed = [
        cell_mean_ece(conf_a[s], hit_a[s], cells) - cell_mean_ece(conf_b[s], hit_b[s], cells)
        for s in range(seeds)
    ]
    assert got.estimate == pytest.approx(np.mean(observed), abs=1e-12)
    assert (got.low, got.high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
