"""OOD and trust metrics against scikit-learn and brute-force loops, on data with ties."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from introspect.metrics.ood import (
    OODMetrics,
    TrustMetrics,
    auac,
    aufc,
    aupr_in,
    aupr_out,
    auroc,
    detection_error,
    fpr_at_tpr,
    ood_metrics,
    percentile_grid,
    roc_curve,
    trust_curve,
)
from tests.conftest import run_two_process_script


def _pair(seed: int, tied: bool, n_in: int = 150, n_out: int = 90):
    """In- and out-of-distribution scores; ``tied`` draws from few values (many ties)."""
    g = torch.Generator().manual_seed(seed)
    if tied:
        s_in = torch.randint(2, 12, (n_in,), generator=g).double()
        s_out = torch.randint(0, 9, (n_out,), generator=g).double()
    else:
        s_in = torch.randn(n_in, generator=g, dtype=torch.float64) + 1.0
        s_out = torch.randn(n_out, generator=g, dtype=torch.float64)
    return s_in, s_out


def _sklearn_inputs(s_in: torch.Tensor, s_out: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    y = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    return y, np.r_[s_in.numpy(), s_out.numpy()]


CASES = [(seed, tied) for seed in range(3) for tied in (False, True)]


@pytest.mark.parametrize(("seed", "tied"), CASES)
def test_detection_metrics_match_sklearn(seed: int, tied: bool) -> None:
    s_in, s_out = _pair(seed, tied)
    y, s = _sklearn_inputs(s_in, s_out)
    assert float(auroc(s_in, s_out)) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert float(aupr_in(s_in, s_out)) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert float(aupr_out(s_in, s_out)) == pytest.approx(
        average_precision_score(1 - y, -s), abs=1e-12
    )
    fpr, tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    ours_fpr, ours_tpr = roc_curve(s_in, s_out)
    np.testing.assert_allclose(ours_fpr.numpy(), fpr, atol=1e-15)
    np.testing.assert_allclose(ours_tpr.numpy(), tpr, atol=1e-15)
    for level in (0.5, 0.8, 0.95, 1.0):
        expected = fpr[np.searchsorted(tpr, level, side="left")]
        assert float(fpr_at_tpr(s_in, s_out, level)) == pytest.approx(expected, abs=1e-15)
    expected_error = np.min(0.5 * (1 - tpr) + 0.5 * fpr)
    assert float(detection_error(s_in, s_out)) == pytest.approx(expected_error, abs=1e-15)


def test_integer_and_float32_scores_give_the_same_results() -> None:
    s_in, s_out = _pair(0, tied=True)
    reference = ood_metrics(s_in, s_out)
    for cast in (torch.int64, torch.float32):
        values = ood_metrics(s_in.to(cast), s_out.to(cast))
        assert all(float(values[k]) == pytest.approx(float(reference[k])) for k in reference)


def test_extreme_cases() -> None:
    s_in, s_out = torch.tensor([3.0, 4.0, 5.0]), torch.tensor([0.0, 1.0])
    perfect = ood_metrics(s_in, s_out)
    assert {k: float(v) for k, v in perfect.items()} == {
        "auroc": 1.0,
        "aupr_in": 1.0,
        "aupr_out": 1.0,
        "fpr95_ood": 0.0,
        "fpr95_id": 0.0,
        "detection_error": 0.0,
    }
    reversed_ = ood_metrics(s_out, s_in)
    assert float(reversed_["auroc"]) == 0.0 and float(reversed_["fpr95_ood"]) == 1.0
    tied = ood_metrics(torch.ones(4), torch.ones(6))
    assert float(tied["auroc"]) == 0.5 and float(tied["fpr95_ood"]) == 1.0
    assert float(tied["aupr_in"]) == pytest.approx(0.4)
    assert float(tied["detection_error"]) == 0.5


def test_invalid_inputs_raise_clear_errors() -> None:
    ok = torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="scores_in is empty"):
        auroc(torch.tensor([]), ok)
    with pytest.raises(ValueError, match="scores_out contains NaN"):
        auroc(ok, torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="1-D"):
        aupr_in(ok[None], ok)
    with pytest.raises(TypeError, match="torch tensor"):
        auroc([1.0], ok)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tpr"):
        fpr_at_tpr(ok, ok, 0.0)


# ---------------------------------------------------------------- trust metrics


def _trust_data(seed: int, n: int = 230, num_classes: int = 4):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    noise = torch.randint(1, num_classes, (n,), generator=g)
    right = torch.rand(n, generator=g) < 0.65
    preds = torch.where(right, labels, (labels + noise) % num_classes)
    scores = torch.randint(0, 25, (n,), generator=g).double() + 3.0 * right  # ties, informative
    return scores, preds, labels


def _brute_force_curves(scores, preds, labels, num_points: int = 100):
    s, p, y = scores.numpy(), preds.numpy(), labels.numpy()
    percentiles = np.arange(num_points) * 100.0 / num_points
    accuracy, f1 = [], []
    for q in percentiles:
        keep = s >= np.percentile(s, q)
        accuracy.append(np.mean(p[keep] == y[keep]))
        f1.append(f1_score(y[keep], p[keep], average="macro"))
    return percentiles, np.array(accuracy), np.array(f1)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("num_points", [100, 7])
def test_trust_metrics_match_brute_force_loops(seed: int, num_points: int) -> None:
    scores, preds, labels = _trust_data(seed)
    grid, accuracy, f1 = _brute_force_curves(scores, preds, labels, num_points)
    got_grid, got_accuracy = trust_curve(scores, preds, labels, num_points=num_points)
    _, got_f1 = trust_curve(scores, preds, labels, 4, metric="f1", num_points=num_points)
    np.testing.assert_allclose(got_grid.numpy(), grid, rtol=1e-12)
    np.testing.assert_allclose(got_accuracy.numpy(), accuracy, rtol=1e-12)
    np.testing.assert_allclose(got_f1.numpy(), f1, rtol=1e-12)
    span = grid[-1] - grid[0]
    expected_auac = np.trapezoid(accuracy, grid) / span
    expected_aufc = np.trapezoid(f1, grid) / span
    correct = preds == labels
    assert float(auac(scores, correct, num_points=num_points)) == pytest.approx(expected_auac)
    assert float(aufc(scores, preds, labels, 4, num_points=num_points)) == pytest.approx(
        expected_aufc
    )


def test_trust_curve_properties_and_errors() -> None:
    scores, preds, labels = _trust_data(3)
    correct = preds == labels
    _, accuracy = trust_curve(scores, preds, labels)
    assert float(accuracy[0]) == pytest.approx(float(correct.double().mean()))
    assert float(auac(correct.double(), correct)) > float(auac(-correct.double(), correct))
    assert torch.equal(
        percentile_grid(4), torch.tensor([0.0, 25.0, 50.0, 75.0], dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="num_classes"):
        trust_curve(scores, preds, labels, metric="f1")
    with pytest.raises(ValueError, match="metric"):
        trust_curve(scores, preds, labels, metric="recall")
    with pytest.raises(TypeError, match="bool"):
        auac(scores, correct.long())
    with pytest.raises(ValueError, match="num_points"):
        auac(scores, correct, num_points=1)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        aufc(scores, preds, labels, 3)


# ---------------------------------------------------------------- streaming metrics


def test_ood_metric_accumulates_like_the_functions() -> None:
    s_in, s_out = _pair(4, tied=True)
    scores = torch.cat([s_in, s_out])
    is_in = torch.cat([torch.ones_like(s_in, dtype=torch.bool), torch.zeros_like(s_out).bool()])
    order = torch.randperm(len(scores), generator=torch.Generator().manual_seed(0))
    metric = OODMetrics()
    for chunk in torch.split(order, 37):
        metric.update(scores[chunk], is_in[chunk])
    metric.update(torch.tensor([]), torch.tensor([], dtype=torch.bool))  # an empty last batch
    result, expected = metric.compute(), ood_metrics(s_in, s_out)
    assert set(result) == {
        "auroc",
        "aupr_in",
        "aupr_out",
        "fpr95_ood",
        "fpr95_id",
        "detection_error",
    }
    assert all(torch.equal(result[k], expected[k]) for k in expected)
    metric.reset()
    metric.update(torch.tensor([1.0, 0.0]), torch.tensor([True, False]))
    assert float(metric.compute()["auroc"]) == 1.0
    with pytest.raises(TypeError, match="bool"):
        metric.update(torch.tensor([1.0]), torch.tensor([1]))


def test_trust_metric_accumulates_like_the_functions() -> None:
    scores, preds, labels = _trust_data(5)
    metric = TrustMetrics(num_classes=4)
    for chunk in torch.split(torch.arange(len(scores)), 50):
        metric.update(scores[chunk], preds[chunk], labels[chunk])
    result = metric.compute()
    assert torch.equal(result["auac"], auac(scores, preds == labels))
    assert torch.equal(result["aufc"], aufc(scores, preds, labels, 4))


DDP_SCRIPT = """
import json, os, sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from introspect.metrics import OODMetrics, TrustMetrics

def data():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(150, generator=g).round(decimals=1)
    is_in = torch.rand(150, generator=g) < 0.5
    preds = torch.randint(0, 3, (150,), generator=g)
    return scores, is_in, preds, torch.randint(0, 3, (150,), generator=g)

def run(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    scores, is_in, preds, labels = data()
    ood, trust = OODMetrics(), TrustMetrics(3)
    if rank == 0:  # rank 1 sees no sample at all
        for part in range(3):
            sl = slice(50 * part, 50 * (part + 1))
            ood.update(scores[sl], is_in[sl])
            trust.update(scores[sl], preds[sl], labels[sl])
    values = {k: float(v) for k, v in {**ood.compute(), **trust.compute()}.items()}
    if rank == 0:
        with open(out, "w") as f:
            json.dump(values, f)
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(run, args=(2, int(sys.argv[1]), sys.argv[2]), nprocs=2)
"""


@pytest.mark.slow
def test_streaming_metrics_synchronize_with_an_empty_process(tmp_path: Path) -> None:
    synced = run_two_process_script(tmp_path, DDP_SCRIPT)
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(150, generator=g).round(decimals=1)
    is_in = torch.rand(150, generator=g) < 0.5
    preds, labels = (
        torch.randint(0, 3, (150,), generator=g),
        torch.randint(0, 3, (150,), generator=g),
    )
    y, s = is_in.numpy().astype(int), scores.numpy()
    assert synced["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert synced["aupr_in"] == pytest.approx(average_precision_score(y, s), abs=1e-6)
    assert synced["auac"] == pytest.approx(float(auac(scores, preds == labels)), abs=1e-6)
    assert synced["aufc"] == pytest.approx(float(aufc(scores, preds, labels, 3)), abs=1e-6)
