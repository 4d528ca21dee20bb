"""Confidence scores against direct references: numpy formulas, autograd loops, scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.covariance import EmpiricalCovariance
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from introspect.backbones import Backbone
from introspect.models.stage2 import IntrospectiveClassifier
from introspect.scores import (
    Mahalanobis,
    PurviewDetector,
    energy,
    entropy,
    format_ood_table,
    format_trust_table,
    gradnorm,
    gradtrust,
    introspective_features,
    introspective_msp,
    introspective_odin,
    logits_and_penultimate,
    margin,
    max_logit,
    msp,
    odin,
    ood_table,
    purview_features,
    purview_last_layer,
    purview_score,
    score_batch,
    trust_table,
)

N, D, B = 5, 6, 7
DT = torch.float64


def _close(actual: torch.Tensor, expected: torch.Tensor | np.ndarray, rtol: float = 1e-9) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=1e-12)


def _logits(seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, N, generator=g, dtype=DT) * scale
    z[0, 1] = z[0, 3] = z[0].max() + 1.0  # a tie at the top
    return z


def _penultimate(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g, dtype=DT)


class TinyNet(nn.Module):
    """Conv-BN-ReLU with non-trivial running statistics, pooling, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, D, 3, padding=1), nn.BatchNorm2d(D), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        )
        self.head = nn.Linear(D, N)
        bn = self.body[1]
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


def _backbone(seed: int = 0) -> Backbone:
    torch.manual_seed(seed)
    return (
        Backbone(TinyNet(), [0.4, 0.5, 0.6], [0.2, 0.25, 0.3], input_size=(3, 6, 6)).to(DT).eval()
    )


def _images(n: int = B, seed: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=DT)


# ---------------------------------------------------------------- output-based scores


def test_output_scores_match_numpy() -> None:
    z = _logits()
    zn = z.numpy()
    p = np.exp(zn - zn.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    top2 = np.sort(p, axis=1)[:, ::-1][:, :2]
    _close(msp(z), p.max(1))
    _close(max_logit(z), zn.max(1))
    _close(entropy(z), (p * np.log(p)).sum(1))
    _close(margin(z), top2[:, 0] - top2[:, 1])
    assert margin(z)[0] == 0.0  # tied top-2 probabilities
    for t in (1.0, 0.5, 7.0):
        _close(energy(z, T=t), t * np.log(np.exp(zn / t).sum(1)))


def test_output_scores_keep_device_dtype_and_reject_bad_input() -> None:
    z = _logits().float()
    for fn in (msp, max_logit, entropy, margin, energy):
        out = fn(z)
        assert out.shape == (B,) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="num_classes >= 2"):
        msp(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="floating point"):
        entropy(torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="positive"):
        energy(z, T=0.0)


# ---------------------------------------------------------------- gradient-based, vs autograd


def _linear(seed: int = 3) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(D, N).to(DT)


def _last_layer_grads(
    lin: nn.Linear, h: torch.Tensor, loss_fn
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample: logits and the autograd gradients of ``loss_fn(z)`` w.r.t. weight and bias."""
    logits, gw, gb = [], [], []
    for i in range(h.shape[0]):
        z = lin(h[i : i + 1])
        w, b = torch.autograd.grad(loss_fn(z), [lin.weight, lin.bias])
        logits.append(z[0].detach())
        gw.append(w)
        gb.append(b)
    return torch.stack(logits), torch.stack(gw), torch.stack(gb)


@pytest.mark.parametrize("T", [1.0, 2.5])
def test_gradnorm_matches_autograd(T: float) -> None:
    lin, h = _linear(), _penultimate()
    uniform = torch.full((1, N), 1.0 / N, dtype=DT)

    def kl(z: torch.Tensor) -> torch.Tensor:
        return F.kl_div(torch.log_softmax(z / T, dim=1), uniform, reduction="sum")

    z, gw, _ = _last_layer_grads(lin, h, kl)
    _close(gradnorm(z, h, T=T), gw.abs().sum((1, 2)))


def test_purview_last_layer_matches_autograd() -> None:
    lin, h = _linear(), _penultimate()
    z, gw, gb = _last_layer_grads(
        lin, h, lambda z: F.binary_cross_entropy_with_logits(z, torch.ones_like(z))
    )
    expected = torch.stack([gw.square().sum((1, 2)), gb.square().sum(1)], dim=1)
    _close(purview_last_layer(z, h), expected)


def _purview_loop(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    rows = []
    params = list(model.parameters())
    for i in range(x.shape[0]):
        z = model(x[i : i + 1])
        loss = F.binary_cross_entropy_with_logits(z, torch.ones_like(z))
        grads = torch.autograd.grad(loss, params)
        rows.append(torch.stack([g.square().sum() for g in grads]))
    return torch.stack(rows)


def test_purview_features_match_per_sample_loop() -> None:
    model, x = _backbone(), _images()
    expected = _purview_loop(model, x)
    _close(purview_features(model, x, chunk_size=3), expected)
    with torch.inference_mode():
        _close(purview_features(model, x), expected)
    last = purview_features(model, x, params=["net.head"])
    _close(last, expected[:, -2:])
    with torch.no_grad():
        logits, h = model.forward_features(x)
    _close(purview_last_layer(logits, h), last)
    assert all(p.grad is None for p in model.parameters())


def test_purview_features_refuse_batchnorm_in_training_mode() -> None:
    model = _backbone().train()
    with pytest.raises(ValueError, match="eval"):
        purview_features(model, _images())


def test_purview_score_uses_the_released_split() -> None:
    norms = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 0.0, 0.0, 0.0, 10.0]])
    # P = 5, j = 4: initial = [:2], final = [2:]
    _close(purview_score(norms, "initial"), torch.tensor([-1.5, 0.0]))
    _close(purview_score(norms, "final"), torch.tensor([-4.0, -10.0 / 3]))
    four = norms[:, :4]  # P = 4, j = 3: initial = [:1], final = [2:] (index 1 in neither)
    _close(purview_score(four, "initial"), torch.tensor([-1.0, 0.0]))
    _close(purview_score(four, "final"), torch.tensor([-3.5, 0.0]))
    with pytest.raises(ValueError, match="empty"):
        purview_score(norms[:, :2], "initial")
    with pytest.raises(ValueError, match="part"):
        purview_score(norms, "middle")


@pytest.mark.parametrize("hidden", [(), (8,)])
def test_purview_detector_separates_small_from_large_norms(hidden: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(4)
    in_norms = torch.exp(torch.randn(64, 4, generator=g) - 2.0)
    out_norms = torch.exp(torch.randn(64, 4, generator=g) + 2.0)
    detector = PurviewDetector(4, hidden=hidden).fit(in_norms, out_norms, epochs=60, lr=0.05)
    assert not detector.training
    with torch.inference_mode():
        s_in, s_out = detector(in_norms), detector(out_norms)
    assert s_in.shape == (64,)
    auroc = (s_in[:, None] > s_out[None, :]).double().mean()
    assert auroc > 0.97


def _gradtrust_energies(lin: nn.Linear, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The released code's definition: per sample, backprop ``MSE(z, 1/N)`` to ``W`` and take
    the unbiased variance over ``j`` of ``G_cj^2``."""
    target = torch.full((1, N), 1.0 / N, dtype=DT)
    z, gw, _ = _last_layer_grads(lin, h, lambda z: F.mse_loss(z, target))
    return z, gw.square().var(dim=2)


def test_gradtrust_closed_forms_match_the_gradient_definition() -> None:
    lin, h = _linear(), _penultimate()
    with torch.no_grad():
        lin.weight.mul_(4.0)
    z, e = _gradtrust_energies(lin, h)
    # E_c = (z_c - 1/N)^4 * 16/N^4 * var_j(h_j^2): the factor depends on h only.
    factor = 16 / N**4 * h.square().var(dim=1)
    _close(e, (z - 1.0 / N).pow(4) * factor[:, None])
    _close(gradtrust(z), e.amax(1) / e.mean(1))
    for k in (1, 2, 3):
        ranked = z.argsort(dim=1, descending=True)
        e_ranked = e.gather(1, ranked)
        _close(gradtrust(z, form="paper", k=k), e_ranked[:, 0] / e_ranked[:, 1 : k + 1].mean(1))
    _close(gradtrust(z, form="paper", k=50), gradtrust(z, form="paper", k=N - 1))


def test_gradtrust_is_higher_for_a_peaked_prediction() -> None:
    peaked = torch.tensor([[12.0, 0.1, -0.5, 0.3, 0.0]])
    flat = torch.tensor([[1.0, 0.9, 1.1, 0.8, 1.05]])
    for form in ("released", "paper"):
        assert gradtrust(peaked, form=form) > gradtrust(flat, form=form)
    released = gradtrust(_logits())
    assert bool(((released >= 1) & (released <= N)).all())
    with pytest.raises(ValueError, match="form"):
        gradtrust(peaked, form="other")
    with pytest.raises(ValueError, match="k must"):
        gradtrust(peaked, form="paper", k=0)


# ---------------------------------------------------------------- ODIN and Mahalanobis


def test_logits_and_penultimate_match_forward_features() -> None:
    model, x = _backbone(), _images()
    logits, h = logits_and_penultimate(model, x)
    ref_logits, ref_h = model.forward_features(x)
    _close(logits, ref_logits)
    _close(h, ref_h)
    plain = model.net  # a plain module: the head is found or given
    _close(logits_and_penultimate(plain, model.normalize(x))[1], ref_h)
    _close(logits_and_penultimate(plain, model.normalize(x), head=plain.head)[1], ref_h)


def _odin_loop(model: nn.Module, x: torch.Tensor, T: float, eps: float) -> torch.Tensor:
    scores = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clone().requires_grad_(True)
        z = model(xi)
        (g,) = torch.autograd.grad(F.cross_entropy(z / T, z.argmax(1)), xi)
        perturbed = xi.detach() - eps * torch.sign(g)
        with torch.no_grad():
            scores.append(torch.softmax(model(perturbed) / T, dim=1).max())
    return torch.stack(scores)


@pytest.mark.parametrize(("T", "eps"), [(1000.0, 0.0014), (100.0, 0.05), (1.0, 0.0)])
def test_odin_matches_hand_written_loop(T: float, eps: float) -> None:
    model, x = _backbone(), _images()
    expected = _odin_loop(model, x, T, eps)
    _close(odin(model, x, T=T, eps=eps), expected)
    with torch.inference_mode():
        _close(odin(model, x, T=T, eps=eps), expected)
    assert all(p.grad is None for p in model.parameters())


def _toy_features(n: int = 120, seed: int = 5, offset: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    centers = torch.randn(4, D, generator=g, dtype=DT) * 3
    mixing = torch.randn(D, D, generator=g, dtype=DT)
    feats = centers[labels] + torch.randn(n, D, generator=g, dtype=DT) @ mixing + offset
    return feats, labels


def _sklearn_reference(feats: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor):
    x, y = feats.numpy(), labels.numpy()
    means = np.stack([x[y == c].mean(0) for c in range(4)])
    cov = EmpiricalCovariance(assume_centered=True).fit(x - means[y])
    dists = np.stack([cov.mahalanobis(queries.numpy() - m) for m in means], axis=1)
    return means, cov, dists


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_mahalanobis_matches_sklearn(offset: float) -> None:
    feats, labels = _toy_features(offset=offset)
    queries = _toy_features(n=9, seed=6, offset=offset)[0]
    maha = Mahalanobis(4)
    for chunk in torch.split(torch.arange(len(labels)), [1, 50, 30, 39]):
        maha.update(feats[chunk], labels[chunk])
    maha.finalize()
    means, cov, dists = _sklearn_reference(feats, labels, queries)
    _close(maha.means, means, rtol=1e-9)
    _close(maha.covariance, cov.covariance_, rtol=1e-8)
    _close(maha.precision, cov.precision_, rtol=1e-7)
    _close(maha.distances(queries), dists, rtol=1e-7)
    _close(maha.score(queries), -dists.min(1), rtol=1e-7)


def test_mahalanobis_errors() -> None:
    maha = Mahalanobis(3)
    with pytest.raises(RuntimeError, match="not fitted"):
        maha.score(torch.zeros(2, D))
    with pytest.raises(RuntimeError, match="no features"):
        maha.finalize()
    maha.update(torch.randn(4, D), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match=r"classes \[2\]"):
        maha.finalize()
    with pytest.raises(ValueError, match="labels must lie"):
        maha.update(torch.randn(1, D), torch.tensor([3]))


def test_mahalanobis_fit_and_input_perturbation() -> None:
    model, x = _backbone(), _images(40)
    labels = torch.arange(40) % N
    maha = Mahalanobis(N).fit(model, DataLoader(TensorDataset(x, labels), batch_size=16))
    with torch.no_grad():
        _, h = model.forward_features(x)
    ref = Mahalanobis(N).update(h, labels).finalize()
    _close(maha.precision, ref.precision)
    _close(maha.score_images(model, x), ref.score(h))
    eps, expected = 0.01, []
    for i in range(6):
        xi = x[i : i + 1].clone().requires_grad_(True)
        distance = maha.distances(model.forward_features(xi)[1]).min()
        (g,) = torch.autograd.grad(distance, xi)
        with torch.no_grad():
            expected.append(maha.score(model.forward_features(xi - eps * g.sign())[1])[0])
    with torch.inference_mode():
        _close(maha.score_images(model, x[:6], eps=eps), torch.stack(expected))


# ---------------------------------------------------------------- introspective chain

RECIPES = [
    {},
    {"loss": "mse", "target": "uniform", "normalize": "none"},
    {"loss": "bce", "per_class": True, "include_bias": True},
    {"normalize": "standardize"},
]


def _head(options: dict, seed: int = 7) -> IntrospectiveClassifier:
    backbone = _backbone()
    per_class = options.get("per_class", False)
    in_dim = (N * D + (N if options.get("include_bias") else 0)) * (N if per_class else 1)
    torch.manual_seed(seed)
    head = IntrospectiveClassifier(
        backbone, feature_options=options, num_classes=N, in_dim=in_dim, hidden=(8,)
    ).to(DT)
    if options.get("normalize") == "standardize":
        head.fit_standardizer(head.features(_images(20, seed=9)))
    return head.eval()


@pytest.mark.parametrize("options", RECIPES)
def test_introspective_features_equal_extracted_ones(options: dict) -> None:
    head, x = _head(options), _images()
    _close(introspective_features(head, x), head.features(x))


def _introspective_odin_reference(
    head: IntrospectiveClassifier, x: torch.Tensor, T: float, eps: float
) -> torch.Tensor:
    """Double backward through autograd's own last-layer gradient (default recipe)."""
    linear = head.backbone.head
    weight = linear.weight.detach().clone().requires_grad_(True)
    scores = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clone().requires_grad_(True)
        _, h = head.backbone.forward_features(xi)
        z = F.linear(h, weight, linear.bias)
        (g,) = torch.autograd.grad(
            F.cross_entropy(z, torch.ones_like(z)), weight, create_graph=True
        )
        r = g.flatten()[None] / g.norm()
        objective = torch.log_softmax(head.classify(r) / T, dim=1).max()
        (gx,) = torch.autograd.grad(objective, xi)
        with torch.no_grad():
            scores.append(torch.softmax(head(xi.detach() + eps * gx.sign()) / T, dim=1).max())
    return torch.stack(scores)


def test_introspective_msp_and_odin() -> None:
    head, x = _head({}), _images()
    with torch.no_grad():
        _close(introspective_msp(head, x), msp(head(x)))
    for T, eps in [(1000.0, 0.0014), (2.0, 0.05)]:
        expected = _introspective_odin_reference(head, x, T, eps)
        with torch.inference_mode():
            _close(introspective_odin(head, x, T=T, eps=eps), expected)


def test_introspective_features_refuse_the_general_path() -> None:
    head = _head({})
    head.feature_options = {"params": ["net.head"]}
    with pytest.raises(ValueError, match="last-layer"):
        introspective_features(head, _images())


# ---------------------------------------------------------------- score_batch and the tables

FEED_FORWARD = [
    "msp",
    "max_logit",
    "entropy",
    "margin",
    "energy",
    "odin",
    "gradnorm",
    "gradtrust",
    "gradtrust_paper",
    "nll",
    "purview",
    "purview_initial",
]


def test_score_batch_mc_dropout_scores_reuse_its_backbone_pass() -> None:
    from introspect.uncertainty import MCDropout

    model, x = _backbone(), _images()
    calls = []
    handle = model.net.register_forward_pre_hook(lambda *_: calls.append(1))
    with torch.inference_mode():
        plain = score_batch(model, x, purview=False)
        n_plain = len(calls)
        mc = MCDropout(7, 0.3, seed=4)
        scores = score_batch(model, x, purview=False, mc_dropout=mc, mc_key=5)
    handle.remove()
    assert len(calls) == 2 * n_plain  # the MC-dropout samples add no backbone pass
    assert list(scores) == [*plain, "mcd_bald", "mcd_expected_entropy"]
    reference = mc.scores(mc.sample_logits(model, x, key=5))
    for name, value in reference.items():
        _close(scores[name], value)
    assert bool((scores["mcd_bald"] <= 0).all()) and float(scores["mcd_bald"].abs().max()) > 0


def test_score_batch_keys_and_values() -> None:
    model, x, head = _backbone(), _images(), _head({})
    maha = Mahalanobis(N).update(*_toy_features_of(model)).finalize()
    with torch.inference_mode():
        scores = score_batch(model, x, introspective_head=head, mahalanobis=maha, odin_eps=0.01)
    assert list(scores) == [*FEED_FORWARD, "mahalanobis", "int_msp", "int_odin"]
    assert all(v.shape == (B,) and not v.is_inference() for v in scores.values())
    with torch.no_grad():
        logits, h = model.forward_features(x)
    _close(scores["msp"], msp(logits))
    _close(scores["gradnorm"], gradnorm(logits, h))
    _close(scores["gradtrust_paper"], gradtrust(logits, form="paper", k=3))
    _close(scores["nll"], -F.cross_entropy(logits, logits.argmax(1), reduction="none"))
    _close(scores["odin"], odin(model, x, eps=0.01))
    _close(scores["purview"], purview_score(purview_features(model, x)))
    _close(scores["mahalanobis"], maha.score(h))
    _close(scores["int_odin"], introspective_odin(head, x, eps=0.01))
    _close(scores["int_msp"], introspective_msp(head, x))
    plain = score_batch(model, x, purview=False)
    assert list(plain) == [k for k in FEED_FORWARD if not k.startswith("purview")]
    # The predicted classes of the same passes, on request.
    with_preds = score_batch(model, x, introspective_head=head, purview=False,
                             with_predictions=True)  # fmt: skip
    assert torch.equal(with_preds["preds"], logits.argmax(1))
    with torch.no_grad():
        assert torch.equal(with_preds["int_preds"], head.classify(head.features(x)).argmax(1))


def _toy_features_of(model: Backbone) -> tuple[torch.Tensor, torch.Tensor]:
    x, labels = _images(30, seed=11), torch.arange(30) % N
    with torch.no_grad():
        return model.forward_features(x)[1], labels


def _separable_backbone() -> Backbone:
    """Pixels -> prototype similarities: class images are confidently classified, flat grey
    images are not."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, D), nn.Linear(D, N))
    with torch.no_grad():
        net[1].weight.copy_(torch.randn(D, 3 * 4 * 4))
        net[1].bias.zero_()
        net[2].weight.copy_(torch.randn(N, D))
        net[2].bias.zero_()
    return Backbone(net, [0.5] * 3, [0.5] * 3, input_size=(3, 4, 4)).eval()


def test_tables_on_a_separable_toy_case() -> None:
    model = _separable_backbone()
    g = torch.Generator().manual_seed(0)
    prototypes = torch.rand(N, 3, 4, 4, generator=g)
    labels = torch.arange(60) % N
    x_in = prototypes[labels] + 0.01 * torch.randn(60, 3, 4, 4, generator=g)
    x_out = 0.5 + 0.01 * torch.randn(40, 3, 4, 4, generator=g)
    scores_in = score_batch(model, x_in, purview=False)
    scores_out = {"grey": score_batch(model, x_out, purview=False)}
    table = ood_table(scores_in, scores_out)
    assert set(table) == set(scores_in)
    assert set(table["msp"]["grey"]) == {
        "auroc",
        "fpr95_ood",
        "fpr95_id",
        "aupr_in",
        "aupr_out",
        "detection_error",
    }
    for name in ("msp", "max_logit", "energy", "gradnorm"):
        assert table[name]["grey"]["auroc"] > 0.99
        assert table[name]["grey"]["fpr95_ood"] < 0.05
    text = format_ood_table(table)
    assert "In-distribution = positive" in text
    assert "| score | grey AUROC | grey FPR(OOD)@95%ID | grey FPR(ID)@95%OOD |" in text
    assert text.count("\n| msp |") == 1
    with pytest.raises(ValueError, match="lacks"):
        ood_table(scores_in, {"grey": {"msp": scores_out["grey"]["msp"]}})


def test_trust_table_ranks_an_informative_score_higher() -> None:
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (200,), generator=g)
    preds = torch.where(torch.rand(200, generator=g) < 0.6, labels, (labels + 1) % 3)
    correct = (preds == labels).double()
    scores = {"oracle": correct + 0.1 * torch.rand(200, generator=g), "noise": torch.rand(200)}
    table = trust_table(scores, preds, labels, 3)
    assert table["oracle"]["auac"] > table["noise"]["auac"] + 0.2
    assert table["oracle"]["aufc"] > table["noise"]["aufc"] + 0.2
    text = format_trust_table(table)
    assert "| score | AUAC | AUFC |" in text and "| oracle |" in text
