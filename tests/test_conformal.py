"""Split-conformal THR/APS/RAPS: the finite-sample coverage guarantee on exchangeable data,
hand-computed small cases, and torch-uncertainty's scores and sets on the same inputs."""

from __future__ import annotations

import math

import pytest
import torch

from introspect.metrics.conformal import (
    SplitConformal,
    conformal_quantile,
    conformal_scores,
    set_coverage,
    set_size,
)


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from the model's own softmax: exchangeable calibration and test points."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(n, 10, generator=g, dtype=torch.float64) * 2, dim=1)
    return probs, torch.multinomial(probs, 1, generator=g).squeeze(1)


def test_hand_scores_and_quantile() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    assert torch.allclose(conformal_scores(probs, "thr"), torch.tensor([[0.5, 0.7, 0.8]]).double())
    assert torch.allclose(conformal_scores(probs, "aps"), torch.tensor([[0.5, 0.8, 1.0]]).double())
    raps = conformal_scores(probs, "raps", k_reg=1, lam=0.1)
    assert torch.allclose(raps, torch.tensor([[0.5, 0.9, 1.2]]).double())
    noisy = conformal_scores(probs, "aps", noise=torch.tensor([0.5], dtype=torch.float64))
    assert torch.allclose(noisy, torch.tensor([[0.25, 0.65, 0.9]]).double())
    # n = 9, alpha = 0.2: rank ceil(10 * 0.8) = 8 of the sorted scores 1..9.
    assert conformal_quantile(torch.arange(1.0, 10.0), 0.2) == 8.0
    assert conformal_quantile(torch.arange(1.0, 4.0), 0.1) == math.inf


def test_hand_sets() -> None:
    cal = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.5, 0.4, 0.1]])
    labels = torch.tensor([0, 1, 2, 1])
    # THR true-class scores 0.4, 0.3, 0.2, 0.6; alpha = 0.4: rank ceil(5 * 0.6) = 3 -> 0.4.
    cp = SplitConformal("thr", 0.4).fit(cal.double(), labels)
    assert cp.quantile == pytest.approx(0.4)
    test = torch.tensor([[0.65, 0.3, 0.05], [0.3, 0.3, 0.4]], dtype=torch.float64)
    sets = cp.predict(test)
    assert sets.tolist() == [[True, False, False], [False, False, True]]  # second: top-1 added
    assert (
        not SplitConformal("thr", 0.4, nonempty=False)
        .fit(cal.double(), labels)
        .predict(test)[1]
        .any()
    )
    assert set_size(sets).tolist() == [1.0, 1.0]
    assert set_coverage(sets, torch.tensor([0, 1])).tolist() == [1.0, 0.0]


@pytest.mark.parametrize(
    "method, randomized", [("thr", False), ("aps", False), ("aps", True), ("raps", True)]
)
def test_finite_sample_coverage(method: str, randomized: bool) -> None:
    alpha, covered = 0.1, []
    for seed in range(20):
        probs, labels = _data(1200, seed)
        cp = SplitConformal(method, alpha, randomized=randomized, k_reg=2, lam=0.05, seed=seed)
        cp.fit(probs[:200], labels[:200])
        covered.append(set_coverage(cp.predict(probs[200:]), labels[200:]).mean().item())
    mean = sum(covered) / len(covered)
    # Guarantee: E[coverage] >= 1 - alpha (and <= 1 - alpha + 1/(n+1) without ties, for the
    # randomized scores); 20 x 1000 test points put the mean within ~0.005 of its expectation.
    assert mean >= 1 - alpha - 0.01
    if randomized:
        assert mean <= 1 - alpha + 1 / 201 + 0.01


def test_randomized_aps_smaller_sets_than_plain() -> None:
    probs, labels = _data(3000, 0)
    plain = SplitConformal("aps", 0.1).fit(probs[:1000], labels[:1000]).predict(probs[1000:])
    rand = SplitConformal("aps", 0.1, randomized=True).fit(probs[:1000], labels[:1000])
    assert set_size(rand.predict(probs[1000:])).mean() < set_size(plain).mean()


@pytest.mark.slow  # importing torch-uncertainty takes 10-200 s
@pytest.mark.parametrize("method", ["thr", "aps", "raps"])
def test_matches_torch_uncertainty(method: str) -> None:
    conformal = pytest.importorskip("torch_uncertainty.post_processing")
    cls = {"thr": conformal.ConformalClsTHR, "aps": conformal.ConformalClsAPS,
           "raps": conformal.ConformalClsRAPS}[method]  # fmt: skip
    kwargs = {} if method == "thr" else {"randomized": False}
    if method == "raps":
        kwargs |= {"penalty": 0.2, "regularization_rank": 2}
    ref = cls(alpha=0.1, model=torch.nn.Identity(), enable_ts=False, **kwargs)
    probs, labels = _data(1000, 0)
    test, _ = _data(2000, 1)
    mine = SplitConformal(method, 0.1, k_reg=2, lam=0.2)
    if method != "thr":
        all_scores = ref._calculate_all_labels(test)
        # torch-uncertainty adds the RAPS penalty in float32.
        assert (all_scores - mine.scores(test)).abs().max() < (1e-12 if method == "aps" else 1e-6)
    mine.fit(probs, labels)
    # torch-uncertainty takes the interpolated (1 - alpha) quantile, not the finite-sample one;
    # given the same threshold, the sets must be identical.
    ref.q_hat = torch.tensor(mine.quantile, dtype=torch.float64)
    assert torch.equal(ref.conformal(test.log()) > 0, mine.predict(test))


def test_errors() -> None:
    probs, labels = _data(10, 0)
    with pytest.raises(RuntimeError):
        SplitConformal().predict(probs)
    with pytest.raises(ValueError):
        SplitConformal("lac")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SplitConformal(alpha=1.5)
    with pytest.raises(ValueError):
        SplitConformal().fit(probs, labels[:5])
