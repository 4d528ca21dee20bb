"""Detectors of challenging inputs: LID, layer Mahalanobis, logistic regression and the
held-out-halves protocol, against brute force, scikit-learn and the tested ``Mahalanobis``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from introspect.detect import (
    LayerMahalanobis,
    LogisticDetector,
    default_layers,
    halves,
    held_out_metrics,
    layer_features,
    lid_mle,
)
from introspect.scores import Mahalanobis
from introspect.stages.detection import detection_rows


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer1 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.layer2(self.layer1(x))))


def test_lid_is_the_mle_of_ma_et_al() -> None:
    g = torch.Generator().manual_seed(0)
    queries, reference = torch.randn(7, 5, generator=g), torch.randn(30, 5, generator=g)
    k = 6
    expected = []
    for q in queries.double().numpy():
        r = np.sort(np.linalg.norm(reference.double().numpy() - q, axis=1))[:k]
        expected.append(-1 / np.mean(np.log(r / r[-1])))
    np.testing.assert_allclose(lid_mle(queries, reference, k).numpy(), expected, rtol=1e-10)
    # exclude_self: a query of the reference skips its zero distance to itself
    own = lid_mle(reference[:4], reference, k, exclude_self=True)
    d = torch.cdist(reference[:4].double(), reference.double()).sort(1).values[:, 1 : k + 1]
    torch.testing.assert_close(own, -1 / (d / d[:, -1:]).log().mean(1))
    with pytest.raises(ValueError, match="k="):
        lid_mle(queries, reference, 31)


def test_layer_mahalanobis_matches_the_penultimate_one_and_a_numpy_reference() -> None:
    net = Tiny().double().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(60, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.arange(60) % 3
    assert default_layers(net) == ["layer1", "layer2", "penultimate"]
    loader = [(x[i : i + 20], y[i : i + 20]) for i in range(0, 60, 20)]
    layered = LayerMahalanobis(3, default_layers(net)).fit(net, loader)
    plain = Mahalanobis(3).fit(net, loader)
    probe = torch.rand(9, 3, 8, 8, generator=g, dtype=torch.float64)
    for eps in (0.0, 0.01):
        torch.testing.assert_close(
            layered.scores(net, probe, eps=eps)[:, -1], plain.score_images(net, probe, eps=eps)
        )
    # layer1: per-channel means, class means, pooled ML covariance, pseudo-inverse
    with torch.no_grad():
        feats = layer_features(net, x, ["layer1"])[1][0].mean((2, 3)).numpy()
        probe_feats = layer_features(net, probe, ["layer1"])[1][0].mean((2, 3)).numpy()
    means = np.stack([feats[y.numpy() == c].mean(0) for c in range(3)])
    centred = feats - means[y.numpy()]
    precision = np.linalg.pinv(centred.T @ centred / len(feats))
    diffs = probe_feats[:, None, :] - means[None]
    dist = np.einsum("bcd,de,bce->bc", diffs, precision, diffs)
    np.testing.assert_allclose(layered.scores(net, probe)[:, 0].numpy(), -dist.min(1), rtol=1e-6)


def test_halves_keep_origins_together_and_are_seeded() -> None:
    origins = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5, 5])
    split = halves(origins, 0, "adv_fgsm")
    fit, held = set(origins[split.fit].tolist()), set(origins[split.held_out].tolist())
    assert not fit & held and fit | held == set(range(6)) and len(fit) == 3
    assert sorted(split.fit.tolist() + split.held_out.tolist()) == list(range(10))
    again = halves(origins, 0, "adv_fgsm")
    assert torch.equal(again.fit, split.fit)
    with pytest.raises(ValueError, match="at least 2"):
        halves(torch.zeros(3, dtype=torch.long), 0, "x")


def test_supervised_detectors_never_score_their_training_samples() -> None:
    g = torch.Generator().manual_seed(2)
    # column 0: a unique sample id; column 1: a weakly informative feature
    n_in, n_out = 40, 30
    f_in = torch.stack([torch.arange(n_in).double(), torch.randn(n_in, generator=g) + 1], 1)
    f_out = torch.stack([1000 + torch.arange(n_out).double(), torch.randn(n_out, generator=g)], 1)
    split_in = halves(torch.arange(n_in), 0, "in")
    split_out = halves(torch.arange(n_out), 0, "out")
    trained: set[float] = set()

    def fit(a: torch.Tensor, b: torch.Tensor):
        trained.update(a[:, 0].tolist() + b[:, 0].tolist())

        def score(f: torch.Tensor) -> torch.Tensor:
            assert not trained & set(f[:, 0].tolist()), "a training sample was scored"
            return f[:, 1]

        return score

    row = held_out_metrics(f_in, f_out, split_in, split_out, fit)
    assert len(trained) == len(split_in.fit) + len(split_out.fit)
    s_in, s_out = f_in[split_in.held_out, 1], f_out[split_out.held_out, 1]
    y = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    assert row["auroc"] == pytest.approx(roc_auc_score(y, torch.cat([s_in, s_out]).numpy()))
    assert set(row) == {
        "auroc",
        "aupr_in",
        "aupr_out",
        "fpr95_ood",
        "fpr95_id",
        "detection_accuracy",
    }


def test_detection_rows_pair_derived_sets_with_the_clean_halves() -> None:
    g = torch.Generator().manual_seed(3)
    n = 40
    clean = {"msp": torch.rand(n, generator=g) + 0.5, "lid": torch.randn(n, 2, generator=g)}
    origins = torch.tensor([i for i in range(n) if i % 3])  # a derived set of some clean images
    derived = {
        "msp": torch.rand(len(origins), generator=g),
        "lid": torch.randn(len(origins), 2, generator=g),
    }
    table, sizes = detection_rows(clean, torch.arange(n), {"adv_pgd": (derived, origins)}, 0)
    split_in = halves(torch.arange(n), 0, "in_distribution")
    expected_fit = int(torch.isin(origins, split_in.fit).sum())
    assert sizes["adv_pgd"] == {"fit": expected_fit, "held_out": len(origins) - expected_fit}
    assert set(table) == {"lid", "msp"} and table["msp"]["adv_pgd"]["auroc"] > 0.8


def test_logistic_detector_separates_shifted_gaussians() -> None:
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(100, 3, generator=g) + 2, torch.randn(80, 3, generator=g)
    detector = LogisticDetector().fit(a, b)
    s_a, s_b = detector.score(a), detector.score(b)
    assert (s_a.mean() > s_b.mean()) and roc_auc_score(
        np.r_[np.ones(100), np.zeros(80)], torch.cat([s_a, s_b]).numpy()
    ) > 0.95
