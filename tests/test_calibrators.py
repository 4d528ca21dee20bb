"""Calibrators beyond temperature scaling and class-wise/adaptive ECE: optimality checked by
autograd, nesting of the models, and netcal on the same inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from introspect.metrics.calibrators import (
    DirichletCalibration,
    IsotonicOneVsRest,
    MatrixScaling,
    VectorScaling,
    adaptive_ece,
    classwise_ece,
)
from introspect.metrics.temperature import fit_temperature, temper


def _data(n: int, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Miscalibrated logits: class-dependent scales and offsets."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    z = torch.randn(n, classes, generator=g, dtype=torch.float64) * 2
    z[torch.arange(n), labels] += 2
    scale = torch.linspace(0.5, 3, classes, dtype=torch.float64)
    return z * scale + torch.linspace(-1, 1, classes, dtype=torch.float64), labels


def _nll(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float(F.nll_loss(probs.log(), labels))


@pytest.mark.parametrize("make", [VectorScaling, MatrixScaling, DirichletCalibration,
                                  lambda: DirichletCalibration(0.5, 0.5)])  # fmt: skip
def test_fit_is_stationary_by_autograd(make) -> None:
    logits, labels = _data(600)
    cal = make().fit(logits, labels)
    theta = cal.theta.clone().requires_grad_(True)
    design = cal._design(logits)
    loss = F.cross_entropy(torch.einsum("iam,am->ia", design, theta), labels)
    if isinstance(cal, DirichletCalibration):
        k = logits.shape[1]
        w, b = theta[:, :k], theta[:, k]
        off = w - torch.diag(torch.diagonal(w))
        loss = loss + cal.off_diagonal * off.pow(2).sum() / (k * (k - 1))
        loss = loss + cal.intercept * b.pow(2).sum() / k
    (grad,) = torch.autograd.grad(loss, theta)
    assert grad.abs().max() < 1e-7
    probs = cal(logits)
    assert torch.allclose(probs.sum(1), torch.ones(len(labels), dtype=torch.float64))


def test_nested_models_order_the_likelihood() -> None:
    logits, labels = _data(800)
    t = fit_temperature(logits, labels)
    ts = _nll(torch.softmax(temper(logits, t).double(), 1), labels)
    vs = _nll(VectorScaling().fit(logits, labels)(logits), labels)
    ms = _nll(MatrixScaling().fit(logits, labels)(logits), labels)
    assert ms <= vs + 1e-9 <= ts + 2e-9
    assert vs < ts - 1e-3  # the class-dependent miscalibration is there to be fixed
    # The penalty pulls the Dirichlet map toward the diagonal: a worse fit on the same data.
    free = _nll(DirichletCalibration().fit(logits, labels)(logits), labels)
    odir = _nll(DirichletCalibration(10.0, 10.0).fit(logits, labels)(logits), labels)
    assert free < odir


def test_classwise_ece_direct() -> None:
    logits, labels = _data(500)
    probs = torch.softmax(logits, 1).numpy()
    y = labels.numpy()
    edges = np.linspace(0, 1, 11)
    total = 0.0
    for c in range(probs.shape[1]):
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            inside = (probs[:, c] >= lo) & ((probs[:, c] < hi) | (hi == 1.0))
            if inside.any():
                gap = abs(np.mean(y[inside] == c) - probs[inside, c].mean())
                total += inside.sum() / len(y) * gap
    assert classwise_ece(torch.from_numpy(probs), labels, 10) == pytest.approx(total / 4, abs=1e-12)


@pytest.mark.slow  # importing netcal takes 10-200 s on a loaded machine
def test_against_netcal() -> None:
    netcal_scaling = pytest.importorskip("netcal.scaling")
    from netcal.binning import IsotonicRegression
    from netcal.metrics import ECE

    logits, labels = _data(600)
    test, test_labels = _data(400, seed=1)
    p, pt = torch.softmax(logits, 1).numpy(), torch.softmax(test, 1).numpy()
    # netcal's multi-class logistic calibration is w ⊙ log p + b: vector scaling of log p.
    ref = netcal_scaling.LogisticCalibration(method="mle")
    ref.fit(p, labels.numpy())
    mine = VectorScaling().fit(torch.log_softmax(logits, 1), labels)
    assert np.abs(ref.transform(pt) - mine(torch.log_softmax(test, 1)).numpy()).max() < 2e-3
    iso = IsotonicRegression()
    iso.fit(p, labels.numpy())
    diff = iso.transform(pt) - IsotonicOneVsRest().fit(logits, labels)(test).numpy()
    assert np.abs(diff).max() < 1e-9
    ace = ECE(15, equal_intervals=False).measure(pt, test_labels.numpy())
    assert adaptive_ece(torch.from_numpy(pt), test_labels, 15) == pytest.approx(ace, abs=1e-6)


def test_errors() -> None:
    logits, labels = _data(20)
    with pytest.raises(RuntimeError):
        MatrixScaling()(logits)
    with pytest.raises(RuntimeError):
        IsotonicOneVsRest()(logits)
    with pytest.raises(ValueError):
        VectorScaling().fit(logits, labels[:3])
    with pytest.raises(ValueError):
        DirichletCalibration(off_diagonal=-1.0)
