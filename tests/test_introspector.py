"""``Introspector``: head resolution and features against a per-sample autograd loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from introspect.backbones.head import HeadNotFoundError
from introspect.gradients import Introspector

N, D = 4, 6


class Net(nn.Module):
    """A small CNN whose last linear layer is ``fc`` (an earlier linear ``proj`` feeds it)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.proj = nn.Linear(5, D)
        self.fc = nn.Linear(D, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(x)).mean((2, 3))
        return self.fc(torch.tanh(self.proj(h)))


def _setup() -> tuple[Net, torch.Tensor]:
    torch.manual_seed(0)
    return Net().eval(), torch.rand(5, 3, 8, 8)


def _reference(model: Net, x: torch.Tensor, include_bias: bool) -> torch.Tensor:
    """Per-sample autograd: d CE(z_i, all-ones) / d fc.weight (and bias), one backward each."""
    rows = []
    for i in range(len(x)):
        z = model(x[i : i + 1])
        loss = -(torch.log_softmax(z, 1) * torch.ones_like(z)).sum()
        grads = torch.autograd.grad(loss, [model.fc.weight, model.fc.bias])
        rows.append(
            torch.cat([grads[0].flatten(), grads[1]]) if include_bias else grads[0].flatten()
        )
    return torch.stack(rows)


@pytest.mark.parametrize("include_bias", [False, True])
def test_features_match_a_per_sample_autograd_loop(include_bias: bool) -> None:
    model, x = _setup()
    ref = _reference(model, x, include_bias)
    out = Introspector(model, include_bias=include_bias).features(x, normalize="none")
    assert out.features is not None and out.factors is not None
    torch.testing.assert_close(out.features, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.factors.materialize(), ref, rtol=1e-5, atol=1e-6)
    l2 = Introspector(model, include_bias=include_bias).features(x)  # l2 by default
    assert l2.features is not None
    torch.testing.assert_close(
        l2.features, ref / ref.norm(dim=1, keepdim=True), rtol=1e-5, atol=1e-6
    )
    with torch.no_grad():
        z = model(x)
        h = torch.tanh(model.proj(F.relu(model.conv(x)).mean((2, 3))))
    torch.testing.assert_close(out.logits, z)
    torch.testing.assert_close(out.h, h)
    torch.testing.assert_close(out.probs, torch.softmax(z, 1))
    assert not any(p.grad is not None for p in model.parameters())


def test_factors_only_and_inference_mode() -> None:
    """Under ``torch.inference_mode`` (Lightning's predict/test loops) the factors come out the
    same, and ``materialize=False`` builds no rows."""
    model, x = _setup()
    ref = _reference(model, x, False)
    intro = Introspector(model, "fc")
    with torch.inference_mode():
        out = intro.features(x, materialize=False, normalize="none")
    assert out.features is None and out.factors is not None
    assert out.factors.g.shape == (5, 1, N) and out.factors.h.shape == (5, D)
    torch.testing.assert_close(out.factors.materialize(), ref, rtol=1e-5, atol=1e-6)


def test_head_found_or_named() -> None:
    model, x = _setup()
    found = Introspector(model)
    assert found.layer is None
    found.features(x[:2])
    assert found.layer is model.fc
    assert Introspector(model, model.fc).layer is model.fc
    assert Introspector(model, "fc").layer is model.fc
    # the earlier linear layer is a valid (if unusual) choice: its own gradient, pulled back
    proj = Introspector(model, "proj").features(x, normalize="none")
    assert proj.features is not None and proj.features.shape == (5, D * 5)


def test_layer_errors_list_the_candidates() -> None:
    model, _ = _setup()
    with pytest.raises(HeadNotFoundError, match="proj, fc"):
        Introspector(model, "missing")
    with pytest.raises(HeadNotFoundError, match="is a Conv2d.*proj, fc"):
        Introspector(model, "conv")
    twins = nn.ModuleDict(
        {"a": nn.Sequential(nn.Linear(2, 2)), "b": nn.Sequential(nn.Linear(2, 2))}
    )
    with pytest.raises(HeadNotFoundError, match="ambiguous.*a.0, b.0"):
        Introspector(twins, "0")
    with pytest.raises(HeadNotFoundError, match="no nn.Linear"):
        Introspector(nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="unknown feature options"):
        Introspector(model, lr=0.1)
