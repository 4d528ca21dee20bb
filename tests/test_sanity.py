"""Sanity checks of explanation maps: model-parameter randomization and max-sensitivity, against
scipy, scikit-image and Quantus on the same models, maps and perturbations."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from introspect.explain import ExplanationError, gradcam, vanilla_gradient
from introspect.sanity import (
    evaluate_sanity,
    format_sanity,
    max_sensitivity,
    model_randomization,
    randomizable_layers,
    spearman,
    ssim,
    uniform_noise,
)

pytestmark = pytest.mark.usefixtures("single_thread")


class BatchNormNet(nn.Module):
    """conv-BN-ReLU twice, global average pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        return self.fc(h.mean(dim=(2, 3)))


def trained_like() -> BatchNormNet:
    """A BatchNormNet whose BN statistics and affine parameters are not the initial ones."""
    torch.manual_seed(0)
    net = BatchNormNet()
    for bn in (net.bn1, net.bn2):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.fixture
def net() -> BatchNormNet:
    return trained_like()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(6, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def test_spearman_and_ssim_match_scipy_and_skimage() -> None:
    stats = pytest.importorskip("scipy.stats")
    metrics = pytest.importorskip("skimage.metrics")
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(4, 10, 9, generator=gen)
    b = a + 0.3 * torch.rand(4, 10, 9, generator=gen)
    a[0, :3] = 0.0  # ties
    b[0, :5] = 0.0
    got = spearman(a, b)
    for i in range(4):
        want = stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy())[0]
        assert got[i].item() == pytest.approx(want, abs=1e-12)
        span = float(torch.cat([a[i], b[i]]).max() - torch.cat([a[i], b[i]]).min())
        want_ssim = metrics.structural_similarity(
            a[i].double().numpy(), b[i].double().numpy(), data_range=span, win_size=7
        )
        # skimage crops the borders before averaging as we do (valid windows only)
        assert ssim(a[i : i + 1], b[i : i + 1]).item() == pytest.approx(want_ssim, abs=1e-6)
    assert torch.isnan(spearman(torch.ones(1, 5), torch.rand(1, 5))).all()


def test_layers_run_from_the_output_down(net: BatchNormNet) -> None:
    assert randomizable_layers(net) == ["fc", "bn2", "conv2", "bn1", "conv1"]


def test_cascading_randomization_changes_the_copy_only(
    net: BatchNormNet, images: torch.Tensor
) -> None:
    before = {k: v.clone() for k, v in net.state_dict().items()}
    state = torch.random.get_rng_state()
    test = model_randomization(vanilla_gradient, net, images, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert test.spearman.shape == (5, 6) and test.steps == [0, 1, 2, 3, 4]
    # the gradient map of a randomized network has little to do with the trained one's
    assert test.spearman[-1].abs().mean() < 0.5
    rows = test.summary()
    assert [r["randomized"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["layer"] == "fc"


def test_a_model_independent_map_passes_nothing(net: BatchNormNet, images: torch.Tensor) -> None:
    def image_map(model, x, layer=None, target=None, normalize=True):
        return x.mean(1)

    test = model_randomization(image_map, net, images, order="independent")
    assert torch.allclose(test.spearman, torch.ones_like(test.spearman))
    assert torch.allclose(test.ssim, torch.ones_like(test.ssim))


def _quantus_explain(method, layer=None):
    def explain(model, inputs, targets, **_):
        x = torch.as_tensor(inputs)
        maps = method(model, x, layer, torch.as_tensor(targets), normalize=False)
        return maps[:, None].numpy()

    return explain


def _quantus(metric, net, images, target, reference, method, layer=None):
    """Quantus ``metric`` of ``method``'s ``reference`` maps for ``target`` on ``images``."""
    return metric(
        model=net,
        x_batch=images.numpy(),
        y_batch=target.numpy(),
        a_batch=reference[:, None].numpy(),
        explain_func=_quantus_explain(method, layer),
        device="cpu",
    )


@pytest.mark.parametrize(
    ("method", "layer", "order"),
    [
        (vanilla_gradient, None, "cascading"),
        (gradcam, "conv2", "cascading"),
        (vanilla_gradient, None, "independent"),
    ],
)
def test_randomization_agrees_with_quantus_mprt(
    net: BatchNormNet, images: torch.Tensor, method, layer, order
) -> None:
    quantus = pytest.importorskip("quantus")
    seed = 5
    started = time.perf_counter()
    ours = model_randomization(method, net, images, layer=layer, order=order, seed=seed)
    ours_s = time.perf_counter() - started
    with torch.no_grad():
        target = net(images).argmax(1)
    reference = method(net, images, layer, target, normalize=False)
    metric = quantus.MPRT(
        layer_order="top_down" if order == "cascading" else "independent",
        seed=seed - 1,  # Quantus seeds every layer's re-initialization with seed + 1
        abs=False,
        normalise=False,
        disable_warnings=True,
    )
    started = time.perf_counter()
    theirs = _quantus(metric, net, images, target, reference, method, layer)
    theirs_s = time.perf_counter() - started
    # Quantus lists the independent test bottom-up, the cascading one top-down like ours
    assert sorted(list(theirs)[1:]) == sorted(ours.layers)
    for row, name in enumerate(ours.layers):
        want = torch.tensor(theirs[name], dtype=torch.float64)
        got = ours.spearman[row]
        assert torch.equal(got.isnan(), want.isnan())
        assert torch.allclose(got.nan_to_num(), want.nan_to_num(), atol=1e-9)
    print(f"MPRT {method.__name__} {order}: ours {ours_s:.3f} s, Quantus {theirs_s:.3f} s")


def test_max_sensitivity_agrees_with_quantus(net: BatchNormNet, images: torch.Tensor) -> None:
    quantus = pytest.importorskip("quantus")
    samples, radius = 5, 0.05
    noise = uniform_noise(images, samples, radius, seed=2)
    started = time.perf_counter()
    ours = max_sensitivity(vanilla_gradient, net, images, noise=noise, batch_size=7)
    ours_s = time.perf_counter() - started
    assert torch.equal(
        ours, max_sensitivity(vanilla_gradient, net, images, samples=5, radius=0.05, seed=2)
    )
    draws = iter(noise.flatten(2).numpy())

    def same_noise(arr, indices=None, indexed_axes=None, **_):
        return arr + next(draws)

    with torch.no_grad():
        target = net(images).argmax(1)
    reference = vanilla_gradient(net, images, None, target, normalize=False)
    metric = quantus.MaxSensitivity(
        nr_samples=samples, perturb_func=same_noise, lower_bound=radius, disable_warnings=True
    )
    started = time.perf_counter()
    theirs = _quantus(metric, net, images, target, reference, vanilla_gradient)
    theirs_s = time.perf_counter() - started
    assert np.allclose(ours.numpy(), np.asarray(theirs), rtol=1e-5, atol=0)
    print(f"max-sensitivity: ours {ours_s:.3f} s, Quantus {theirs_s:.3f} s")


def test_max_sensitivity_is_zero_for_an_input_free_map(
    net: BatchNormNet, images: torch.Tensor
) -> None:
    def fixed(model, x, layer=None, target=None, normalize=True):
        return (
            torch.arange(x.shape[-2] * x.shape[-1], dtype=x.dtype)
            .view(x.shape[-2:])
            .expand(x.shape[0], -1, -1)
            + 1
        )

    assert torch.equal(max_sensitivity(fixed, net, images), torch.zeros(6, dtype=torch.float64))
    with pytest.raises(ExplanationError, match="noise must be"):
        max_sensitivity(fixed, net, images, noise=torch.zeros(2, 1, 3, 12, 12))


def test_sanity_table(net: BatchNormNet, images: torch.Tensor) -> None:
    table = evaluate_sanity(net, images, {"vanilla_gradient": vanilla_gradient}, points=3)
    row = table["vanilla_gradient"]
    assert [s["randomized"] for s in row["randomization"]] == [1, 3, 5]
    assert row["max_sensitivity"] > 0
    text = format_sanity(table)
    assert "ρ, 5 random" in text and "| vanilla_gradient |" in text


def test_sanity_section_records_its_settings(net: BatchNormNet, images: torch.Tensor) -> None:
    from introspect.sanity import sanity_section

    record, text = sanity_section(
        net, images[:2], {"vanilla_gradient": vanilla_gradient}, samples=2
    )
    assert (record["samples"], record["radius"], record["images"]) == (2, 0.02, 2)
    assert "over 2 uniform δ" in text and "| vanilla_gradient |" in text
    with pytest.raises(ExplanationError, match="unknown sanity settings"):
        sanity_section(net, images, {"vanilla_gradient": vanilla_gradient}, nope=1)
