"""Selective classification: risk–coverage curve, AURC, AUGRC and selective risk against a
direct NumPy computation and torch-uncertainty's AURC/AUGRC on the same inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from introspect.metrics.selective import (
    augrc,
    aurc,
    risk_coverage_curve,
    risk_coverage_figure,
    selective_risk,
)


def _data(n: int = 500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    conf = rng.random(n)
    ok = (rng.random(n) < 0.3 + 0.6 * conf).astype(float)  # confident inputs more often right
    return conf, ok


def _direct(conf: np.ndarray, ok: np.ndarray) -> tuple[float, float]:
    """AURC and AUGRC by thresholding at every distinct confidence (a loop over thresholds)."""
    n = conf.size
    a = g = 0.0
    for t in np.unique(conf)[::-1]:
        accepted = conf >= t
        group = conf == t
        errors = np.sum(1 - ok[accepted])
        a += group.sum() / n * errors / accepted.sum()
        g += group.sum() / n * errors / n
    return a, g


def test_exact_areas_match_direct_loop_with_ties() -> None:
    conf, ok = _data()
    conf = np.round(conf, 1)  # many ties
    a, g = _direct(conf, ok)
    assert aurc(conf, ok) == pytest.approx(a, abs=1e-12)
    assert augrc(conf, ok) == pytest.approx(g, abs=1e-12)
    # Reordering the inputs (ties included) changes nothing.
    perm = np.random.default_rng(1).permutation(conf.size)
    assert aurc(conf[perm], ok[perm]) == pytest.approx(a, abs=1e-12)


def test_hand_case() -> None:
    # Sorted by confidence: right, wrong, right, wrong -> risks 0, 1/2, 1/3, 1/2.
    conf, ok = np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])
    assert aurc(conf, ok) == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 2) / 4)
    assert augrc(conf, ok) == pytest.approx((0 + 1 / 4 + 1 / 4 + 2 / 4) / 4)
    assert selective_risk(conf, ok, 0.5) == pytest.approx(0.5)
    assert selective_risk(conf, ok, 0.25) == 0.0
    rc = risk_coverage_curve(conf, ok)
    np.testing.assert_allclose(rc.coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(rc.risk, [0, 1 / 2, 1 / 3, 1 / 2])
    np.testing.assert_allclose(rc.threshold, conf)


@pytest.mark.slow  # importing torch-uncertainty takes 10-200 s
def test_trapezoid_matches_torch_uncertainty() -> None:
    tu = pytest.importorskip("torch_uncertainty.metrics.classification")
    g = torch.Generator().manual_seed(0)
    n = 1017
    labels = torch.randint(0, 10, (n,), generator=g)
    logits = torch.randn(n, 10, generator=g, dtype=torch.float64) * 2
    logits[torch.arange(n), labels] += 2
    probs = torch.softmax(logits, dim=1)
    conf, pred = probs.max(dim=1)
    ok = (pred == labels).numpy()
    ref_aurc, ref_augrc = tu.AURC(), tu.AUGRC()
    ref_aurc.update(probs, labels)
    ref_augrc.update(probs, labels)
    assert abs(aurc(conf.numpy(), ok, convention="trapezoid") - float(ref_aurc.compute())) < 1e-9
    assert abs(augrc(conf.numpy(), ok, convention="trapezoid") - float(ref_augrc.compute())) < 1e-9
    # Without ties the exact area is the mean of the n selective risks.
    assert aurc(conf.numpy(), ok) == pytest.approx(
        np.mean(np.cumsum(1 - ok[np.argsort(-conf.numpy())]) / np.arange(1, n + 1))
    )


def test_figure_and_errors(tmp_path) -> None:
    conf, ok = _data()
    fig = risk_coverage_figure({"feed-forward": (conf, ok), "random": (conf[::-1], ok)},
                               tmp_path / "rc.png")  # fmt: skip
    assert (tmp_path / "rc.png").stat().st_size > 0
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[0].startswith("feed-forward (area under curve")
    with pytest.raises(ValueError):
        aurc(conf, ok[:-1])
    with pytest.raises(ValueError):
        selective_risk(conf, ok, 0.0)
    with pytest.raises(ValueError):
        aurc(conf, ok + 2)
