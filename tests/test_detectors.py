"""The ``Detector`` protocol: every registered detector against the function or class it wraps,
and four of them against pytorch-ood on the same inputs."""

from __future__ import annotations

import pytest
import torch
from pytorch_ood.detector import ODIN, EnergyBased, MaxLogit, MaxSoftmax
from torch import nn

from introspect.detect import (
    DETECTORS,
    Detector,
    LayerMahalanobis,
    LogisticDetector,
    create_detector,
    lid_features,
    list_detectors,
)
from introspect.detect.features import layer_features
from introspect.models.stage2 import IntrospectiveClassifier
from introspect.scores import (
    Mahalanobis,
    PurviewDetector,
    energy,
    entropy,
    gradnorm,
    gradtrust,
    introspective_msp,
    introspective_odin,
    logits_and_penultimate,
    margin,
    max_logit,
    msp,
    odin,
    purview_features,
    purview_score,
)
from introspect.scores.output import nll
from introspect.uncertainty import MCDropout, ensemble_probs, mutual_information

N = 3


class Tiny(nn.Module):
    """Two residual-stage-like convolutions, pooling and a linear head."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.layer1 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(6, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.layer2(self.layer1(x))))


def _images(n: int = 8, seed: int = 1, shift: float = 0.0) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) + shift


def _labelled(n: int = 24) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x = _images(n, seed=3)
    y = torch.arange(n) % N
    return [(x[:12], y[:12]), (x[12:], y[12:])]


def _flagged() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """In-distribution rows (flag 1) and brighter, shifted rows (flag 0)."""
    inside, outside = _images(16, seed=4), _images(16, seed=5, shift=1.5)
    x = torch.cat([inside, outside])
    flags = torch.cat([torch.ones(16), torch.zeros(16)])
    order = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    return [(x[order[:16]], flags[order[:16]]), (x[order[16:]], flags[order[16:]])]


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "fn", "options"),
    [
        ("msp", msp, {}),
        ("max_logit", max_logit, {}),
        ("energy", energy, {"T": 2.0}),
        ("entropy", entropy, {}),
        ("margin", margin, {}),
        ("nll", nll, {}),
        ("gradtrust", gradtrust, {}),
        ("gradtrust_paper", gradtrust, {"form": "paper", "k": 2}),
    ],
)
def test_logit_scores_equal_their_functions(name: str, fn, options: dict) -> None:
    model, x = Tiny().eval(), _images()
    detector = create_detector(name, model, **{k: v for k, v in options.items() if k != "form"})
    assert isinstance(detector, Detector)
    assert detector.fit([]) is detector
    with torch.no_grad():
        expected = fn(model(x), **options)
    _close(detector.score(x), expected)
    _close(detector.score((x, torch.zeros(len(x)))), expected)  # a batch led by the images


def test_model_scores_equal_their_functions() -> None:
    model, x = Tiny().eval(), _images()
    logits, h = logits_and_penultimate(model, x)
    _close(create_detector("gradnorm", model, T=2.0).score(x), gradnorm(logits, h, T=2.0))
    _close(
        create_detector("odin", model, T=10.0, eps=0.01).score(x), odin(model, x, T=10.0, eps=0.01)
    )
    norms = purview_features(model, x)
    _close(
        create_detector("purview", model, part="initial").score(x), purview_score(norms, "initial")
    )
    with torch.inference_mode():  # Lightning's test loop
        _close(create_detector("odin", model).score(x), odin(model, x))


def test_mahalanobis_detectors_equal_the_fitted_classes() -> None:
    model, x, loader = Tiny().eval(), _images(), _labelled()
    detector = create_detector("mahalanobis", model, num_classes=N, eps=0.01).fit(loader)
    reference = Mahalanobis(N).fit(model, loader)
    _close(detector.score(x), reference.score_images(model, x, eps=0.01))
    layers = create_detector("layer_mahalanobis", model, num_classes=N).fit(loader)
    per_layer = LayerMahalanobis(N, ["layer1", "layer2", "penultimate"]).fit(model, loader)
    _close(layers.score(x), per_layer.scores(model, x).mean(1))
    weighted = create_detector(
        "layer_mahalanobis", model, num_classes=N, layers=["layer2"], weights=[2.0]
    ).fit(loader)
    _close(weighted.score(x), 2.0 * per_layer.scores(model, x)[:, 1])


def test_uncertainty_detectors_equal_their_functions() -> None:
    model, x = Tiny().eval(), _images()
    detector = create_detector("mc_dropout", model, samples=5, p=0.3, seed=2)
    samples = MCDropout(5, 0.3, seed=2).sample_logits(model, x, key=0, head=model.head)
    expected = -mutual_information(samples.softmax(-1))
    _close(detector.score(x), expected)
    members = [Tiny(seed=s).eval() for s in range(3)]
    with torch.no_grad():
        logits = [m(x) for m in members]
    _close(create_detector("ensemble", models=members).score(x), ensemble_probs(logits).amax(1))
    probs = torch.stack([z.softmax(-1) for z in logits])
    _close(
        create_detector("ensemble", models=members, measure="bald").score(x),
        -mutual_information(probs),
    )


def test_introspective_detectors_equal_their_functions() -> None:
    torch.manual_seed(0)
    backbone = Tiny()
    head = IntrospectiveClassifier(
        backbone, feature_options={}, num_classes=N, in_dim=N * 6, hidden=(8,)
    ).eval()
    x = _images()
    _close(create_detector("introspective", head=head).score(x), introspective_msp(head, x))
    odin_det = create_detector("introspective", head=head, measure="odin", T=10.0, eps=0.01)
    _close(odin_det.score(x), introspective_odin(head, x, T=10.0, eps=0.01))


def test_supervised_detectors_equal_the_classes_they_fit() -> None:
    model, loader = Tiny().eval(), _flagged()
    x = torch.cat([b[0] for b in loader])
    inside = torch.cat([b[1] for b in loader]).bool()
    probe = _images(6, seed=9)

    def features(images: torch.Tensor) -> torch.Tensor:
        return logits_and_penultimate(model, images)[1].detach()

    detector = create_detector("logistic", features=features).fit(loader)
    feats = features(x)
    reference = LogisticDetector(0).fit(feats[inside], feats[~inside])
    _close(detector.score(probe), reference.score(features(probe)))

    reference_images = _images(10, seed=11)
    lid = create_detector("lid", model, reference=reference_images, k=3).fit(loader)
    layers = ["layer1", "layer2", "penultimate"]
    with torch.no_grad():
        acts = [a.flatten(1) for a in layer_features(model, reference_images, layers)[1]]
    lid_x = lid_features(model, x, acts, layers, 3).float()
    expected = LogisticDetector(0).fit(lid_x[inside], lid_x[~inside])
    _close(lid.score(probe), expected.score(lid_features(model, probe, acts, layers, 3).float()))

    purview = create_detector("purview_detector", model, hidden=(4,), seed=3).fit(loader)
    norms = purview_features(model, x)
    torch.manual_seed(3)
    own = PurviewDetector(norms.shape[1], (4,)).fit(norms[inside], norms[~inside])
    with torch.no_grad():
        _close(purview.score(probe), own(purview_features(model, probe)))
    with pytest.raises(ValueError, match="in-distribution \\(1\\) and challenging \\(0\\)"):
        create_detector("logistic", features=features).fit([(x, torch.ones(len(x)))])


def test_scores_agree_with_pytorch_ood() -> None:
    """pytorch-ood's outlier scores are the negated confidences (higher = more OOD)."""
    model, x = Tiny().eval(), _images()
    pairs = [
        ("msp", {}, MaxSoftmax(model)),
        ("max_logit", {}, MaxLogit(model)),
        ("energy", {"T": 3.0}, EnergyBased(model, t=3.0)),
        ("odin", {"T": 100.0, "eps": 0.01}, ODIN(model, eps=0.01, temperature=100.0)),
    ]
    for name, options, theirs in pairs:
        _close(create_detector(name, model, **options).score(x), -theirs.predict(x).detach())


def test_registry_names_and_errors() -> None:
    assert list_detectors() == sorted(DETECTORS)
    assert {"msp", "odin", "mahalanobis", "lid", "mc_dropout", "ensemble"} <= set(DETECTORS)
    with pytest.raises(ValueError, match="unknown detector 'nope'; choose one of .*energy"):
        create_detector("nope")
    with pytest.raises(RuntimeError, match="not fitted"):
        create_detector("logistic", features=lambda x: x).score(_images())
