"""Gradient features against brute-force per-sample autograd loops (float64, rel. error 1e-8)."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from introspect.backbones.head import HeadNotFoundError
from introspect.gradients import (
    FeatureSpec,
    Standardizer,
    extract,
    extract_features,
    feature_dim,
    per_sample_grads,
)

N, D, B = 5, 8, 4
DT = torch.float64
RTOL = 1e-8


# ---------------------------------------------------------------- models


class SmallCNN(nn.Module):
    """Conv-BN-ReLU blocks with non-trivial running statistics, then a linear head."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(6, D, 3, stride=2), nn.BatchNorm2d(D), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(D, N, bias=bias)
        for bn in (self.block1[1], self.block2[1]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.3, 0.3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.block2(self.block1(x))).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class TwoLayerHead(nn.Module):
    """Features -> hidden -> ReLU -> N; the gradient is taken at the last linear."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(16, D), nn.ReLU(), nn.Linear(D, N))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.body(x))


class ScaledLogits(nn.Module):
    """Logits are the head output times a constant plus an offset (ops after the head)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, D, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(D, N)
        self.register_buffer("offset", torch.linspace(-1, 1, N))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.5 * self.head(self.body(x).flatten(1)) + self.offset


class TokenHead(nn.Module):
    """The head acts on every token (B, T, D); the logits average over tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, D, 4, stride=4)
        self.head = nn.Linear(D, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(tokens).mean(1)


def _build(cls: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cls().to(DT).eval()


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module], nn.Linear]]] = {
    "cnn_bn": (SmallCNN, lambda m: m.fc),
    "two_layer_head": (TwoLayerHead, lambda m: m.mlp[3]),
    "post_head_op": (ScaledLogits, lambda m: m.head),
    "token_head": (TokenHead, lambda m: m.head),
}


def _images(n: int = B, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g, dtype=DT)


# ---------------------------------------------------------------- brute-force reference


def _ref_loss(loss: str, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    if loss == "ce":
        return F.cross_entropy(z[None], t[None])
    if loss == "mse":
        return F.mse_loss(z, t)
    return F.binary_cross_entropy_with_logits(z, t)


def _ref_target(target: str | torch.Tensor, i: int) -> torch.Tensor:
    if isinstance(target, torch.Tensor):
        return F.one_hot(target[i], N).to(DT)
    return torch.ones(N, dtype=DT) if target == "ones" else torch.full((N,), 1 / N, dtype=DT)


def _loop(
    model: nn.Module,
    params: list[nn.Parameter],
    x: torch.Tensor,
    loss: str,
    target_of: Callable[[int], torch.Tensor],
) -> torch.Tensor:
    """Per sample: zero grads, forward x[i:i+1], backward, read and concatenate ``p.grad``."""
    rows = []
    for i in range(x.shape[0]):
        model.zero_grad(set_to_none=True)
        z = model(x[i : i + 1])[0]
        _ref_loss(loss, z, target_of(i)).backward()
        rows.append(torch.cat([p.grad.flatten().clone() for p in params]))
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


def _reference(
    model: nn.Module,
    head: nn.Linear,
    x: torch.Tensor,
    loss: str = "ce",
    target: str | torch.Tensor = "ones",
    per_class: bool = False,
    include_bias: bool = False,
) -> torch.Tensor:
    params = [head.weight, head.bias] if include_bias else [head.weight]
    if not per_class:
        return _loop(model, params, x, loss, lambda i: _ref_target(target, i))
    blocks = [
        _loop(model, params, x, loss, lambda _i, q=q: F.one_hot(torch.tensor(q), N).to(DT))
        for q in range(N)
    ]
    return torch.cat(blocks, dim=1)


def _assert_rel(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    err = (actual - expected).norm() / expected.norm()
    assert err <= RTOL, f"relative error {err:.3e}"


# ---------------------------------------------------------------- every option vs the loop

TARGETS = ["ones", "uniform", "index"]


def _target(name: str, n: int = B) -> str | torch.Tensor:
    return torch.arange(n, dtype=torch.int64) % N if name == "index" else name


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("loss", ["ce", "mse", "bce"])
@pytest.mark.parametrize("target_name", TARGETS)
@pytest.mark.parametrize("include_bias", [False, True])
def test_matches_per_sample_loop(
    model_name: str, loss: str, target_name: str, include_bias: bool
) -> None:
    cls, get_head = MODELS[model_name]
    model = _build(cls)
    x, target = _images(), _target(target_name)
    ref = _reference(model, get_head(model), x, loss, target, include_bias=include_bias)
    opts = {"loss": loss, "target": target, "include_bias": include_bias}
    _assert_rel(extract(model, x, normalize="none", **opts), ref)
    _assert_rel(extract(model, x, normalize="l2", **opts), ref / ref.norm(dim=1, keepdim=True))


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("loss", ["ce", "mse", "bce"])
@pytest.mark.parametrize("include_bias", [False, True])
def test_per_class_matches_loop(model_name: str, loss: str, include_bias: bool) -> None:
    cls, get_head = MODELS[model_name]
    model = _build(cls)
    x = _images(3)
    ref = _reference(model, get_head(model), x, loss, per_class=True, include_bias=include_bias)
    opts = {"loss": loss, "per_class": True, "include_bias": include_bias}
    _assert_rel(extract(model, x, normalize="none", **opts), ref)
    _assert_rel(extract(model, x, normalize="l2", **opts), ref / ref.norm(dim=1, keepdim=True))


def test_per_class_with_bias_layout_is_weight_then_bias_per_class() -> None:
    model = _build(SmallCNN)
    x = _images(3)
    feats = extract(model, x, per_class=True, include_bias=True, normalize="none")
    blocks = feats.reshape(3, N, N * D + N)
    for q in range(N):
        target = torch.full((3,), q, dtype=torch.int64)
        w = _reference(model, model.fc, x, target=target)
        b = _loop(model, [model.fc.bias], x, "ce", lambda i, t=target: _ref_target(t, i))
        _assert_rel(blocks[:, q, : N * D], w)
        _assert_rel(blocks[:, q, N * D :], b)


def test_ce_all_ones_closed_form() -> None:
    """docs/concepts.md: row_i = (N softmax(z_i) - 1) h_i^T, flattened row-major."""
    model = _build(SmallCNN)
    x = _images()
    with torch.no_grad():
        h = model.features(x)
        z = model.fc(h)
    expected = ((N * z.softmax(1) - 1)[:, :, None] * h[:, None, :]).reshape(B, -1)
    _assert_rel(extract(model, x, normalize="none"), expected)
    # The all-ones CE gradient is the sum of the N per-class gradients.
    per_class = extract(model, x, per_class=True, normalize="none").reshape(B, N, -1)
    _assert_rel(per_class.sum(1), expected)


def test_extract_features_returns_head_input_and_logits_of_the_same_pass() -> None:
    model = _build(SmallCNN)
    x = _images()
    with torch.no_grad():
        h = model.features(x)
        z = model(x)
    out = extract_features(model, x, loss="bce", include_bias=True)
    feats, h_out, z_out = out.features, out.h, out.logits
    assert out.factors is not None
    _assert_rel(out.factors.materialize(), feats)
    _assert_rel(h_out, h)
    _assert_rel(z_out, z)
    _assert_rel(feats, extract(model, x, loss="bce", include_bias=True))
    assert not (feats.requires_grad or h_out.requires_grad or z_out.requires_grad)


def test_explicit_head_override_by_module_and_path() -> None:
    """Point at the hidden layer of a two-layer head: gradients flow back through ReLU+linear."""
    model = _build(TwoLayerHead)
    x = _images()
    hidden = model.mlp[1]
    ref = _reference(model, hidden, x, "mse", "uniform", include_bias=True)
    opts = {"loss": "mse", "target": "uniform", "include_bias": True, "normalize": "none"}
    _assert_rel(extract(model, x, head=hidden, **opts), ref)
    _assert_rel(extract(model, x, head="mlp.1", **opts), ref)
    default = extract(model, x, normalize="none")
    _assert_rel(default, _reference(model, model.mlp[3], x))


def test_standardize_against_manual_mean_std() -> None:
    model = _build(SmallCNN)
    train_x, test_x = _images(9, seed=2), _images(seed=3)
    train_ref = _reference(model, model.fc, train_x, "bce", include_bias=True)
    test_ref = _reference(model, model.fc, test_x, "bce", include_bias=True)
    train = extract(model, train_x, loss="bce", include_bias=True, normalize="none")
    std = Standardizer().fit([train[:2], train[2:7], train[7:]])
    out = extract(
        model, test_x, loss="bce", include_bias=True, normalize="standardize", standardizer=std
    )
    # (x - mean) / max(std, eps): a dead channel makes some features constant (std 0)
    assert (train_ref.std(0) == 0).any()
    expected = (test_ref - train_ref.mean(0)) / train_ref.std(0).clamp_min(1e-8)
    _assert_rel(out, expected)


# ---------------------------------------------------------------- Standardizer


def test_standardizer_streaming_matches_torch_and_round_trips() -> None:
    g = torch.Generator().manual_seed(4)
    data = 3 + 2 * torch.randn(37, 6, generator=g, dtype=DT)
    data[:, 2] = 1.5  # a constant feature: std 0, clamped to eps
    loader = DataLoader(TensorDataset(data, torch.zeros(37)), batch_size=5)
    fitted = Standardizer(eps=1e-6).fit(loader)
    assert fitted.count == 37
    torch.testing.assert_close(fitted.mean, data.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fitted.std, data.std(0), rtol=1e-12, atol=1e-12)
    queries = torch.randn(4, 6, generator=g, dtype=DT)
    std = data.std(0).clamp_min(1e-6)
    torch.testing.assert_close(fitted.transform(queries), (queries - data.mean(0)) / std)
    # update() streams the same statistics as fit() of the whole tensor
    streamed = Standardizer(eps=1e-6)
    for chunk in data.split(11):
        streamed.update(chunk)
    torch.testing.assert_close(streamed.std, data.std(0), rtol=1e-12, atol=1e-12)
    buf = io.BytesIO()
    torch.save(fitted.state_dict(), buf)
    buf.seek(0)
    restored = Standardizer().load_state_dict(torch.load(buf, weights_only=True))
    assert restored.count == 37 and restored.eps == 1e-6
    assert torch.equal(restored.transform(queries), fitted.transform(queries))
    assert fitted.transform(queries.float()).dtype == torch.float32


def test_standardizer_errors() -> None:
    with pytest.raises(RuntimeError, match="at least two rows"):
        Standardizer().transform(torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match="at least two rows"):
        Standardizer().fit(torch.zeros(1, 3))
    fitted = Standardizer().fit(torch.randn(4, 3))
    with pytest.raises(ValueError, match="fitted on 3"):
        fitted.transform(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="fitted on 3"):
        fitted.update(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="batch, features"):
        Standardizer().update(torch.zeros(3))
    with pytest.raises(TypeError, match="feature tensors"):
        Standardizer().fit([[1.0, 2.0]])


# ---------------------------------------------------------------- grad modes, no side effects


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_works_under_inference_mode_and_no_grad(mode: str) -> None:
    model = _build(ScaledLogits)
    x = _images()
    ref = _reference(model, model.head, x, "ce", "uniform", include_bias=True)
    ctx = torch.inference_mode() if mode == "inference_mode" else torch.no_grad()
    with ctx:
        images = x.clone()  # an inference tensor under inference_mode
        out = extract(model, images, target="uniform", include_bias=True, normalize="none")
        per = extract(model, images, per_class=True, normalize="l2")
        grads = per_sample_grads(model, images, params="head.weight", target="uniform")
        assert not torch.is_grad_enabled()
    _assert_rel(out, ref)
    _assert_rel(grads, ref[:, : N * D])
    ref_pc = _reference(model, model.head, x, per_class=True)
    _assert_rel(per, ref_pc / ref_pc.norm(dim=1, keepdim=True))
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("frozen", [False, True])
def test_parameters_untouched_and_modes_kept(frozen: bool) -> None:
    model = _build(SmallCNN)
    if frozen:
        for p in model.parameters():
            p.requires_grad_(False)
    model.block2.train()  # a mixed-mode model: extract must not change any module's mode
    modes = {n: m.training for n, m in model.named_modules()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = _images()
    extract(model, x, per_class=True, include_bias=True)
    extract(model, x, loss="bce", target=torch.zeros(B, dtype=torch.int64), normalize="none")
    model.block2.eval()
    per_sample_grads(model, x, params=["block2", "fc.bias"], chunk_size=3)
    extract(model, x, params="block1.0", normalize="none")
    model.block2.train()
    assert {n: m.training for n, m in model.named_modules()} == modes
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert not model.fc._forward_hooks
    assert torch.is_grad_enabled()


# ---------------------------------------------------------------- general path


@pytest.mark.parametrize("chunk_size", [1, 3, 5])
def test_per_sample_grads_of_conv_block(chunk_size: int) -> None:
    model = _build(SmallCNN)
    x = _images(5)
    target = torch.tensor([0, 4, 2, 2, 1])
    block = list(model.block2.parameters())  # conv weight, conv bias, BN weight, BN bias
    ref = _loop(model, block, x, "ce", lambda i: _ref_target(target, i))
    got = per_sample_grads(model, x, params="block2", target=target, chunk_size=chunk_size)
    _assert_rel(got, ref)
    # parameter order follows named_parameters(), whatever the order given
    mixed = [model.block1[1].weight, model.fc.weight]
    ref_mixed = _loop(model, mixed, x, "mse", lambda i: _ref_target("ones", i))
    got_mixed = per_sample_grads(
        model, x, params=["fc.weight", "block1.1.weight"], loss="mse", chunk_size=chunk_size
    )
    _assert_rel(got_mixed, ref_mixed)


def test_extract_with_params_per_class_and_l2() -> None:
    model = _build(TwoLayerHead)
    x = _images(3)
    block = list(model.body.parameters())
    ref = torch.cat(
        [
            _loop(model, block, x, "bce", lambda _i, q=q: F.one_hot(torch.tensor(q), N).to(DT))
            for q in range(N)
        ],
        dim=1,
    )
    spec = FeatureSpec(loss="bce", per_class=True, params=["body"])
    _assert_rel(extract(model, x, **asdict(spec)), ref / ref.norm(dim=1, keepdim=True))


# ---------------------------------------------------------------- spec, dims, errors


def test_feature_spec_and_feature_dim() -> None:
    model = _build(SmallCNN)
    x = _images(2)
    cases = {(False, False): 40, (False, True): 45, (True, False): 200, (True, True): 225}
    for (per_class, bias), expected in cases.items():  # N = 5, D = 8 by hand
        spec = FeatureSpec(per_class=per_class, include_bias=bias, loss="mse")
        assert feature_dim(spec, N, D, has_bias=True) == expected
        assert extract(model, x, **asdict(spec)).shape == (2, expected)
    with pytest.raises(ValueError, match="no bias"):
        feature_dim(FeatureSpec(include_bias=True), N, D, has_bias=False)
    with pytest.raises(ValueError, match="parameter shapes"):
        feature_dim(FeatureSpec(params="layer3"), N, D, has_bias=True)
    with pytest.raises(ValueError, match="loss must be one of"):
        FeatureSpec(loss="nll")
    with pytest.raises(ValueError, match="normalize must be one of"):
        FeatureSpec(normalize="l1")
    with pytest.raises(ValueError, match="per_class"):
        FeatureSpec(per_class=True, target="uniform")


class NoLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, N, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))


class TwiceHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.fc(x.mean((2, 3))))


class DetachedHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3))).detach()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"loss": "nll"}, ValueError, r"loss must be one of \('ce', 'mse', 'bce'\)"),
        ({"target": "zeros"}, ValueError, r"target must be one of \('ones', 'uniform'\)"),
        ({"target": torch.zeros(B)}, ValueError, "int64 class index"),
        ({"target": torch.zeros(B + 1, dtype=torch.int64)}, ValueError, "5 class indices for 4"),
        ({"target": torch.full((B,), N, dtype=torch.int64)}, ValueError, r"\[0, 5\)"),
        ({"target": [0, 1, 2, 3]}, TypeError, "class indices"),
        ({"per_class": True, "target": "uniform"}, ValueError, "leave target at its default"),
        ({"per_class": True, "target": torch.zeros(B, dtype=torch.int64)}, ValueError, "per_cl"),
        ({"normalize": "l1"}, ValueError, r"one of \('none', 'l2', 'standardize'\)"),
        ({"normalize": "standardize"}, ValueError, "needs standardizer="),
        ({"standardizer": Standardizer()}, ValueError, "normalize='standardize'"),
        ({"head": "block1.0"}, HeadNotFoundError, "must be an nn.Linear"),
        ({"head": "nope"}, HeadNotFoundError, "no submodule 'nope'"),
        ({"head": nn.Linear(D, N)}, ValueError, "did not run"),
        ({"params": "fc", "head": "fc"}, ValueError, "drop one"),
        ({"params": "fc", "include_bias": True}, ValueError, "name the bias"),
        ({"params": "layer9"}, ValueError, "names no parameter"),
        ({"params": []}, ValueError, "params is empty"),
    ],
)
def test_extract_errors(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        extract(_build(SmallCNN), _images(), **kwargs)


def test_model_errors() -> None:
    x = _images()
    with pytest.raises(HeadNotFoundError, match="executes no nn.Linear"):
        extract(_build(NoLinear), x)
    with pytest.raises(ValueError, match="include_bias=True but the head has no bias"):
        extract(_build(lambda: SmallCNN(bias=False)), x, include_bias=True)
    with pytest.raises(RuntimeError, match="more than once"):
        extract(_build(TwiceHead), x)
    with pytest.raises(ValueError, match="does not depend differentiably"):
        extract(_build(DetachedHead), x)
    model = _build(SmallCNN)
    with pytest.raises(ValueError, match="chunk_size"):
        per_sample_grads(model, x, params="fc", chunk_size=0)
    model.train()
    with pytest.raises(ValueError, match="call model.eval"):
        per_sample_grads(model, x, params="fc")
