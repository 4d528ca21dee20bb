"""Rank-one gradient factors: ``materialize`` against ``extract`` (itself checked against
per-sample autograd loops in test_gradients.py), first layers on factors against the same layer
on materialized features, in float32 (max relative error 1e-5)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from introspect.gradients import (
    GradientFactors,
    Standardizer,
    extract,
    extract_features,
    factor_linear,
)
from introspect.models.bilinear import LowRankBilinear
from tests.test_gradients import N, ScaledLogits, SmallCNN, TokenHead, TwoLayerHead


def factors_of(model: nn.Module, x: torch.Tensor, **options: object) -> GradientFactors:
    """The rank-one factors ``extract_features`` returns without materializing."""
    factors = extract_features(model, x, materialize=False, **options).factors
    assert factors is not None
    return factors


pytestmark = pytest.mark.usefixtures("single_thread")

B = 6
TOL = 1e-5
MODELS = {"cnn": SmallCNN, "two_layer_head": TwoLayerHead, "post_head_op": ScaledLogits}


def _rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest reference entry."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    return float((actual - expected).detach().abs().max() / expected.detach().abs().max())


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name]().eval()


def _images(n: int = B, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def _standardizer(model: nn.Module, **options) -> Standardizer:
    return Standardizer().fit(extract(model, _images(16, seed=5), normalize="none", **options))


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("loss", ["ce", "mse", "bce"])
@pytest.mark.parametrize("target", ["ones", "uniform", "index", "per_class"])
def test_materialize_equals_extract(model_name: str, loss: str, target: str) -> None:
    """Every option of ``extract``: each loss and target, per_class, with and without the bias,
    each normalization."""
    model = _model(model_name)
    x, fit_x = _images(), _images(12, seed=5)
    for include_bias in (False, True):
        options: dict = {"loss": loss, "include_bias": include_bias}
        fit_options = dict(options)
        if target == "per_class":
            options["per_class"] = fit_options["per_class"] = True
        elif target == "index":
            options["target"], fit_options["target"] = torch.arange(B) % N, torch.arange(12) % N
        else:
            options["target"] = fit_options["target"] = target
        std = Standardizer().fit(extract(model, fit_x, normalize="none", **fit_options))
        for normalize, standardizer in (("none", None), ("l2", None), ("standardize", std)):
            expected = extract(model, x, normalize=normalize, standardizer=standardizer, **options)
            factors = factors_of(
                model, x, normalize=normalize, standardizer=standardizer, **options
            )
            assert factors.num_features == expected.shape[1]
            assert factors.g.shape == (B, N if target == "per_class" else 1, N)
            err = _rel(factors.materialize(), expected)
            assert err <= TOL, (include_bias, normalize, err)


def test_l2_scale_is_the_product_of_the_factor_norms() -> None:
    model = _model("cnn")
    x = _images()
    factors = factors_of(model, x, include_bias=True, normalize="l2")
    raw = extract(model, x, include_bias=True, normalize="none")
    assert _rel(factors.scale, 1.0 / torch.linalg.vector_norm(raw, dim=1)) <= TOL


def test_per_class_stack_follows_from_the_softmax() -> None:
    """For CE, the gradient for target e_q at the logits is p - e_q."""
    model = _model("two_layer_head")
    x = _images()
    factors = factors_of(model, x, per_class=True, normalize="none")
    p = torch.softmax(model(x), dim=1).detach()
    assert _rel(factors.g, p[:, None, :] - torch.eye(N)) <= TOL


def test_token_head_is_refused_with_the_fix() -> None:
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="materialize=True"):
        factors_of(TokenHead().eval(), _images())


def _factors(per_class: bool, include_bias: bool, normalize: str) -> GradientFactors:
    model = _model("cnn")
    x = _images(40, seed=3)
    std = _standardizer(model, per_class=per_class, include_bias=include_bias)
    if normalize != "standardize":
        std = None
    return factors_of(
        model, x, per_class=per_class, include_bias=include_bias, normalize=normalize,
        standardizer=std,
    )  # fmt: skip


@pytest.mark.parametrize("per_class", [False, True])
@pytest.mark.parametrize("include_bias", [False, True])
@pytest.mark.parametrize("normalize", ["none", "l2", "standardize"])
@pytest.mark.parametrize("head_standardizes", [False, True])
def test_factor_linear_equals_the_layer_on_materialized_features(
    per_class: bool, include_bias: bool, normalize: str, head_standardizes: bool
) -> None:
    factors = _factors(per_class, include_bias, normalize)
    x = factors.materialize()
    layer = nn.Linear(x.shape[1], 7)
    mean = std = None
    if head_standardizes:
        mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
        expected = layer((x - mean) / std)
    else:
        expected = layer(x)
    actual = factor_linear(factors, layer.weight, layer.bias, mean=mean, std=std)
    assert _rel(actual, expected) <= TOL


def test_factor_linear_gradients_equal_the_materialized_ones() -> None:
    factors = _factors(False, True, "l2")
    x = factors.materialize()
    layer = nn.Linear(x.shape[1], 5)
    target = torch.arange(len(x)) % 5
    F.cross_entropy(layer(x), target).backward()
    expected = layer.weight.grad.clone()
    layer.zero_grad()
    F.cross_entropy(factor_linear(factors, layer.weight, layer.bias), target).backward()
    assert _rel(layer.weight.grad, expected) <= TOL


@pytest.mark.parametrize("per_class", [False, True])
@pytest.mark.parametrize("include_bias", [False, True])
def test_low_rank_bilinear_equals_its_dense_weight(per_class: bool, include_bias: bool) -> None:
    """On factors, the rank-r layer equals a linear layer whose weight is Σ_r vec(a_kr b_krᵀ)
    (built here by an explicit loop) applied to the materialized features."""
    factors = _factors(per_class, include_bias, "l2")
    q, n = factors.g.shape[1:]
    d = factors.h.shape[1]
    torch.manual_seed(2)
    layer = LowRankBilinear(q, n, d, out_features=4, rank=3, include_bias=include_bias)
    dense = torch.zeros(4, factors.num_features)
    for k in range(4):
        for r in range(3):
            outer = torch.outer(layer.a[k, r], layer.b[k, r]).detach().view(q, n, -1)
            row = [outer[..., :d].reshape(q, -1)]
            if include_bias:
                row.append(outer[..., d])
            dense[k] += torch.cat(row, dim=1).reshape(-1)
    x = factors.materialize()
    expected = F.linear(x, dense, layer.bias.detach())
    assert _rel(layer(factors).detach(), expected) <= TOL
    assert _rel(layer(x).detach(), expected) <= TOL
    assert sum(p.numel() for p in layer.parameters()) == 4 * 3 * (q * n + d + include_bias) + 4
