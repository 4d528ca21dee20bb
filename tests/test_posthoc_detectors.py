"""The post-hoc OOD detectors (``introspect.detect.posthoc``) against pytorch-ood 0.4.0 on the
same small model and synthetic data: pytorch-ood's outlier scores are negated confidences.
Where the definitions differ by a positive constant factor it is named in the test; AUROC is
compared in every case."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from introspect.detect import create_detector
from introspect.metrics.ood import auroc
from introspect.models.stage2 import IntrospectiveClassifier

detector = pytest.importorskip("pytorch_ood.detector")

C, D = 4, 12


class Net(nn.Module):
    """Two convolutions, max-pooled ReLU features of width ``D`` (a well-conditioned covariance)
    and a linear head over ``C`` classes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            *(nn.Conv2d(3, 16, 3, padding=1), nn.Tanh(), nn.Conv2d(16, D, 3, padding=1)),
            *(nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten()),
        )
        self.head = nn.Linear(D, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.fixture(scope="module")
def setup() -> tuple[Net, list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor, torch.Tensor]:
    model = Net().eval()
    g = torch.Generator().manual_seed(1)

    def images(n: int, low: float = 0.0, high: float = 2.0) -> torch.Tensor:
        scale = torch.rand(n, 3, 1, 1, generator=g) * (high - low) + low
        return torch.rand(n, 3, 6, 6, generator=g) * scale

    train = images(240)
    with torch.no_grad():  # a head spreading the training rows over the classes
        h = model.body(train)
        w = torch.randn(C, D, generator=g) / h.std(0) / 3
        model.head.weight.copy_(w)
        model.head.bias.copy_(-w @ h.mean(0))
        labels = model(train).argmax(1)
    flip = torch.rand(240, generator=g) < 0.2  # some wrong labels: SHE keeps the correct rows
    labels = torch.where(flip, (labels + 1) % C, labels)
    labels[:C] = torch.arange(C)  # every class present
    loader = [(train[i : i + 60], labels[i : i + 60]) for i in range(0, 240, 60)]
    loader.append((images(5, 3.0, 4.0), torch.full((5,), -1)))  # rows to skip
    inside, outside = images(50), images(50, 1.0, 3.5)
    return model, loader, inside, outside


# ViM: pytorch-ood's eigenvectors are float32, ours float64 (scores to 1e-3, one pair of the
# 2,500 may swap: AUROC to 1e-3). RMD: pytorch-ood adds a 1e-6 ridge, we take a pseudo-inverse.
TOLERANCE = {"vim": (1e-3, 1e-5, 1e-3), "rmd": (1e-4, 1e-4, 1e-9)}


def _compare(
    ours: torch.Tensor, theirs: torch.Tensor, n_in: int, factor: float = 1.0, key: str = ""
) -> None:
    """``ours == -factor * theirs`` and equal AUROCs (ours: introspect's, theirs: sklearn's)."""
    rtol, atol, auroc_tol = TOLERANCE.get(key, (1e-4, 1e-5, 1e-9))
    theirs = theirs.detach().double().cpu()
    assert ours.std() > 0
    torch.testing.assert_close(ours.double(), -factor * theirs, rtol=rtol, atol=atol)
    truth = [1] * n_in + [0] * (len(ours) - n_in)
    ours_auroc = float(auroc(ours[:n_in], ours[n_in:]))
    assert ours_auroc == pytest.approx(roc_auc_score(truth, -theirs.numpy()), abs=auroc_tol)


def _oracles(model: Net) -> dict[str, object]:
    enc, fc = model.body, model.head
    w, b = fc.weight, fc.bias
    return {
        "vim": detector.ViM(enc, d=5, w=w, b=b),
        "knn": detector.KNN(enc, k=7),
        "react": detector.ReAct(enc, fc, percentile=0.8),
        "ash_p": detector.ASH(
            lambda x: enc(x)[:, :, None, None], lambda z: fc(z.flatten(1)), "ash-p", 0.6
        ),
        "ash_b": detector.ASH(
            lambda x: enc(x)[:, :, None, None], lambda z: fc(z.flatten(1)), "ash-b", 0.6
        ),
        "ash_s": detector.ASH(
            lambda x: enc(x)[:, :, None, None], lambda z: fc(z.flatten(1)), "ash-s", 0.6
        ),
        "dice": detector.DICE(enc, w, b, p=0.7),
        "gen": detector.GEN(model, gamma=0.3, M=3),
        "she": detector.SHE(enc, fc),
        "rmd": detector.RMD(enc),
        "nnguide": detector.NNGuide(enc, fc, k=6),
        "fdbd": detector.fDBD(enc, fc),
    }


OURS = {
    "vim": ("vim", {"d": 5}),
    "knn": ("knn", {"k": 7}),
    "react": ("react", {"percentile": 0.8}),
    "ash_p": ("ash", {"variant": "p", "percentile": 0.6}),
    "ash_b": ("ash", {"variant": "b", "percentile": 0.6}),
    "ash_s": ("ash", {"variant": "s", "percentile": 0.6}),
    "dice": ("dice", {"p": 0.7}),
    "gen": ("gen", {"gamma": 0.3, "M": 3}),
    "she": ("she", {}),
    "rmd": ("rmd", {}),
    "nnguide": ("nnguide", {"k": 6}),
    "fdbd": ("fdbd", {}),
}


@pytest.mark.parametrize("key", list(OURS))
def test_posthoc_detector_equals_pytorch_ood(key: str, setup) -> None:
    model, loader, inside, outside = setup
    x = torch.cat([inside, outside])
    name, options = OURS[key]
    ours = create_detector(name, model, **options).fit(loader).score(x)
    oracle = _oracles(model)[key]
    oracle.to("cpu")
    if getattr(oracle, "requires_fit", False) or key == "react":
        oracle.fit(loader)
    # GEN: pytorch-ood averages the M terms, the paper (and we) sum them. RMD: pytorch-ood's
    # covariances are sums of outer products, ours divided by the number of fitting rows N,
    # so its distances are ours / N.
    factor = {"gen": 3.0, "rmd": 240.0}.get(key, 1.0)
    _compare(ours, oracle.predict(x), len(inside), factor, key)


def test_she_and_rmd_ignore_rows_labelled_ood(setup) -> None:
    model, loader, inside, _ = setup
    for name in ("she", "rmd"):
        full = create_detector(name, model).fit(loader).score(inside)
        torch.testing.assert_close(
            full, create_detector(name, model).fit(loader[:-1]).score(inside)
        )


@pytest.mark.parametrize("name", ["knn", "gen", "vim"])
def test_introspective_variants_equal_pytorch_ood_on_the_head(name: str, setup) -> None:
    """``<name>_introspective`` is pytorch-ood's detector on the introspective head's hidden
    features and logits."""
    model, loader, inside, outside = setup
    head = IntrospectiveClassifier(
        model, feature_options={}, num_classes=C, in_dim=C * D, hidden=(10,)
    ).eval()
    last = head.head[-1]

    def hidden(x: torch.Tensor) -> torch.Tensor:
        return head.classify_with_hidden(head.features(x))[1]

    oracle = {
        "knn": detector.KNN(hidden, k=5),
        "gen": detector.GEN(lambda x: last(hidden(x)), gamma=0.1),
        "vim": detector.ViM(hidden, d=4, w=last.weight, b=last.bias),
    }[name]
    oracle.to("cpu")
    if name != "gen":
        oracle.fit(loader)
    options = {"knn": {"k": 5}, "gen": {}, "vim": {"d": 4}}[name]
    ours = create_detector(f"{name}_introspective", head=head, **options).fit(loader)
    x = torch.cat([inside, outside])
    factor = C if name == "gen" else 1.0
    _compare(ours.score(x), oracle.predict(x), len(inside), factor, name)


def test_posthoc_errors(setup) -> None:
    model, loader, inside, _ = setup
    with pytest.raises(RuntimeError, match="not fitted"):
        create_detector("knn", model).score(inside)
    with pytest.raises(ValueError, match="variant must be p, b or s"):
        create_detector("ash", model, variant="x")
    with pytest.raises(ValueError, match="needs at least 500 fitting rows"):
        create_detector("knn", model, k=500).fit(loader)
    with pytest.raises(ValueError, match="labels >= 0"):
        create_detector("rmd", model).fit(loader[-1:])


def test_fpr95_both_conventions_equal_sklearn_and_pytorch_ood() -> None:
    """``fpr95_id`` is pytorch-ood's FPR95 (OOD positive, outlier scores); ``fpr95_ood`` the FPR
    of OOD at 95 % ID recall, read off sklearn's ROC curve."""
    from pytorch_ood.metrics.functional import fpr_at_tpr
    from sklearn.metrics import roc_curve

    from introspect.metrics.ood import fpr95_id, fpr95_ood

    g = torch.Generator().manual_seed(0)
    for n_in, n_out, shift in ((300, 200, 1.0), (97, 411, 0.3), (50, 50, 0.0)):
        s_in = torch.randn(n_in, generator=g, dtype=torch.float64) + shift
        s_out = (torch.randn(n_out, generator=g, dtype=torch.float64) * 2).round(decimals=1)
        labels = torch.cat([torch.zeros(n_in), -torch.ones(n_out)]).long()
        theirs = fpr_at_tpr(-torch.cat([s_in, s_out]), labels, 0.95)
        assert float(fpr95_id(s_in, s_out)) == pytest.approx(float(theirs), abs=1e-12)
        fpr, tpr, _ = roc_curve([1] * n_in + [0] * n_out, torch.cat([s_in, s_out]).numpy())
        assert float(fpr95_ood(s_in, s_out)) == pytest.approx(fpr[(tpr >= 0.95).argmax()])
        assert float(fpr95_id(s_in, s_out)) != float(fpr95_ood(s_in, s_out))
