"""CAM, Grad-CAM++, SmoothGrad, Integrated Gradients, occlusion, RISE and LIME against Captum,
pytorch-grad-cam, closed forms and brute force."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from introspect.backbones import load_backbone
from introspect.explain import (
    ExplanationError,
    cam,
    gradcam,
    gradcam_plus_plus,
    integrated_gradients,
    lime,
    occlusion,
    rise,
    rise_masks,
    smoothgrad,
    superpixels,
    vanilla_gradient,
)
from introspect.explain.perturbation import lime_samples
from tests.explain_nets import FlatNet, HalfMeanModel, PoolNet, cifar_images

SIZE = (10, 14)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def net() -> PoolNet:
    torch.manual_seed(0)
    return PoolNet().eval()


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(2, 3, *SIZE)


def predicted(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def softmax_of(model: nn.Module):
    return lambda x: F.softmax(model(x), dim=1)


# ---- CAM -------------------------------------------------------------------------------------


def test_cam_is_head_weighted_pool_input_and_grad_cam_times_pool_size(
    net: PoolNet, images: torch.Tensor
) -> None:
    store: dict[str, torch.Tensor] = {}
    handle = net.conv2.register_forward_hook(lambda m, i, o: store.__setitem__("a", F.relu(o)))
    with torch.no_grad():
        target = net(images).argmax(1)
    handle.remove()
    weights = net.fc.weight[target].detach()
    expected = F.relu((weights[:, :, None, None] * store["a"]).sum(1))  # (B, 10, 14): no resize
    got = cam(net, images, normalize=False)  # finds relu2, the pooled map
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got, cam(net, images, layer="relu2", normalize=False))
    # Grad-CAM of the pooled map has alpha_k = W_tk / (h w): the same map up to h * w.
    grad = gradcam(net, images, layer="relu2", normalize=False)
    torch.testing.assert_close(got, grad * SIZE[0] * SIZE[1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cam(net, images), gradcam(net, images, layer="relu2"))
    other = torch.tensor([3, 0])
    assert not torch.allclose(cam(net, images, target=other, normalize=False), got)
    with pytest.raises(ExplanationError, match="global average pool"):
        cam(net, images, layer="conv2")  # before the ReLU: not the pooled map


def test_cam_on_resnet20_finds_layer3_and_refuses_non_pooled_layers() -> None:
    torch.manual_seed(0)
    model = load_backbone("cifar_resnet20", num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32)
    default = cam(model, x, normalize=False)
    torch.testing.assert_close(default, cam(model, x, layer="layer3", normalize=False))
    torch.testing.assert_close(
        default, 64 * gradcam(model, x, layer="layer3", normalize=False), atol=1e-5, rtol=1e-4
    )
    with pytest.raises(ExplanationError, match="global average pool"):
        cam(model, x, layer="layer2")
    with pytest.raises(ExplanationError, match="global average pool"):
        cam(FlatNet(SIZE), torch.rand(1, 3, *SIZE))


# ---- Grad-CAM++ and Grad-CAM against pytorch-grad-cam ---------------------------------------


def grad_cam_library(kind: str, model: nn.Module, layer: nn.Module, x: torch.Tensor, target):
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    method = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}[kind]
    with method(model=model, target_layers=[layer]) as explainer:
        maps = explainer(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in target])
    return torch.from_numpy(maps)


def test_gradcam_plus_plus_matches_pytorch_grad_cam(net: PoolNet, images: torch.Tensor) -> None:
    with torch.no_grad():
        net.fc.weight.mul_(
            200
        )  # gradients ~1, so the library's 1e-6 in a denominator is negligible
    target = torch.tensor([1, 2])
    ours = gradcam_plus_plus(net, images, layer="conv2", target=target)
    # The layer keeps the input resolution, so no resizing is involved on either side; the
    # library scales each map by (max + 1e-7).
    reference = grad_cam_library("gradcam++", net, net.conv2, images, target)
    torch.testing.assert_close(ours, reference, atol=2e-4, rtol=0)
    plain = gradcam(net, images, layer="conv2", target=target)
    torch.testing.assert_close(plain, grad_cam_library("gradcam", net, net.conv2, images, target))
    assert (ours - plain).abs().max() > 0.05  # the two weightings differ on this net


def test_gradcam_plus_plus_closed_form(net: PoolNet, images: torch.Tensor) -> None:
    store: dict[str, torch.Tensor] = {}
    handle = net.conv2.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    logits = net(images)
    handle.remove()
    acts = store["a"]
    target = logits.argmax(1)
    maps = []
    for b in range(len(images)):
        (g,) = torch.autograd.grad(logits[b, target[b]], acts, retain_graph=True)
        g, a = g[b].double(), acts[b].detach().double()
        total = a.sum(dim=(1, 2))
        weights = []
        for k in range(len(a)):
            num, den = g[k] ** 2, 2 * g[k] ** 2 + total[k] * g[k] ** 3
            alpha = torch.where(den != 0, num / torch.where(den != 0, den, 1), 0)
            weights.append((alpha * g[k].clamp(min=0)).sum())
        maps.append(F.relu((torch.stack(weights)[:, None, None] * a).sum(0)))
    expected = torch.stack(maps).float()
    got = gradcam_plus_plus(net, images, layer="conv2", normalize=False)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)


# ---- SmoothGrad ------------------------------------------------------------------------------


def test_smoothgrad_matches_captum_noise_tunnel_with_its_noise() -> None:
    from captum.attr import NoiseTunnel, Saliency

    torch.manual_seed(0)
    model = PoolNet(channels=1).eval()  # one channel: max_c |g_c| is Captum's |g|
    x = torch.rand(2, 1, *SIZE)
    target = predicted(model, x)
    seen: list[torch.Tensor] = []
    handle = model.register_forward_pre_hook(lambda m, i: seen.append(i[0].detach().clone()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = NoiseTunnel(Saliency(model)).attribute(
            x, nt_type="smoothgrad", nt_samples=5, stdevs=0.2, target=target, abs=True
        )
    handle.remove()
    noisy = torch.cat(seen).view(2, 5, 1, *SIZE)  # Captum repeats each example consecutively
    noise = (noisy - x[:, None]).transpose(0, 1)  # ours is sample-major
    got = smoothgrad(model, x, normalize=False, noise=noise, batch_size=3)
    torch.testing.assert_close(got, reference[:, 0], atol=1e-7, rtol=1e-5)


def test_smoothgrad_averages_any_method_over_seeded_noise(
    net: PoolNet, images: torch.Tensor
) -> None:
    seen: list[torch.Tensor] = []
    handle = net.register_forward_pre_hook(lambda m, i: seen.append(i[0].detach().clone()))
    first = smoothgrad(net, images, normalize=False, samples=400, sigma=0.2, seed=3)
    handle.remove()
    noisy = torch.cat([s for s in seen if len(s) > len(images)])
    noise = noisy.view(400, *images.shape) - images
    spread = images.flatten(1).amax(1) - images.flatten(1).amin(1)
    measured = noise.transpose(0, 1).flatten(1).std(dim=1)
    torch.testing.assert_close(measured, 0.2 * spread, rtol=0.02, atol=0)
    torch.testing.assert_close(
        first, smoothgrad(net, images, normalize=False, samples=400, sigma=0.2, seed=3)
    )
    assert not torch.allclose(
        first, smoothgrad(net, images, normalize=False, samples=400, sigma=0.2, seed=4)
    )
    # any map method, always for the class predicted on the clean images
    noise = 0.3 * torch.randn(3, *images.shape)
    target = predicted(net, images)
    expected = torch.stack(
        [gradcam(net, images + n, target=target, normalize=False) for n in noise]
    ).mean(0)
    got = smoothgrad(net, images, method=gradcam, normalize=False, noise=noise, batch_size=4)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(ExplanationError, match="noise must be"):
        smoothgrad(net, images, noise=noise[:, :1])


# ---- Integrated Gradients ----------------------------------------------------------------


def test_integrated_gradients_matches_captum(net: PoolNet, images: torch.Tensor) -> None:
    from captum.attr import IntegratedGradients

    target = predicted(net, images)
    explainer = IntegratedGradients(net)
    got = integrated_gradients(net, images, normalize=False, steps=16, batch_size=5)
    reference = explainer.attribute(images, target=target, n_steps=16, method="gausslegendre")
    torch.testing.assert_close(got, reference.sum(1), atol=1e-9, rtol=1e-5)
    mean = images.mean(dim=(2, 3), keepdim=True)
    got = integrated_gradients(net, images, normalize=False, steps=16, baseline="mean")
    reference = explainer.attribute(
        images, baselines=mean.expand_as(images), target=target, n_steps=16
    )
    torch.testing.assert_close(got, reference.sum(1), atol=1e-9, rtol=1e-5)
    # Captum's "riemann_trapezoid" weights are 1/n (halved at the ends), summing to (n-1)/n;
    # ours are the trapezoid rule's 1/(n-1): the same sum up to that factor.
    got = integrated_gradients(net, images, normalize=False, steps=16, method="trapezoid")
    reference = explainer.attribute(images, target=target, n_steps=16, method="riemann_trapezoid")
    torch.testing.assert_close(got, reference.sum(1) * 16 / 15, atol=1e-9, rtol=1e-5)


def test_integrated_gradients_completeness(net: PoolNet, images: torch.Tensor) -> None:
    with torch.no_grad():
        logits = net(images)
        base = net(torch.zeros_like(images))
    target = logits.argmax(1)
    expected = logits.gather(1, target[:, None])[:, 0] - base.gather(1, target[:, None])[:, 0]
    got = integrated_gradients(net, images, normalize=False, steps=64).sum(dim=(1, 2))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-3)


# ---- occlusion ---------------------------------------------------------------------------


def test_occlusion_matches_captum_with_a_mean_colour_default(
    net: PoolNet, images: torch.Tensor
) -> None:
    from captum.attr import Occlusion

    target = predicted(net, images)
    mean = images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    reference = Occlusion(softmax_of(net)).attribute(
        images, sliding_window_shapes=(3, 4, 4), strides=(3, 2, 2), baselines=mean, target=target
    )
    got = occlusion(net, images, normalize=False, patch=4, stride=2)  # default baseline
    torch.testing.assert_close(got, reference[:, 0], atol=1e-7, rtol=1e-5)
    black = occlusion(net, images, normalize=False, patch=4, stride=2, baseline=0.0)
    assert not torch.allclose(got, black)  # the default is not a black patch
    grey = occlusion(net, images, normalize=False, patch=4, stride=2, baseline=0.5)
    reference = Occlusion(softmax_of(net)).attribute(
        images, sliding_window_shapes=(3, 4, 4), strides=(3, 2, 2), baselines=0.5, target=target
    )
    torch.testing.assert_close(grey, reference[:, 0], atol=1e-7, rtol=1e-5)


# ---- RISE --------------------------------------------------------------------------------


def test_rise_masks_are_upsampled_grids_kept_with_probability_p() -> None:
    masks = rise_masks(3000, 4, (12, 12), p=0.3, seed=1)
    assert masks.shape == (3000, 12, 12) and masks.min() >= 0 and masks.max() <= 1
    assert abs(masks.mean().item() - 0.3) < 0.01
    torch.testing.assert_close(masks, rise_masks(3000, 4, (12, 12), p=0.3, seed=1))
    assert not torch.equal(masks, rise_masks(3000, 4, (12, 12), p=0.3, seed=2))

    # Cells of 3 pixels: neighbouring pixels move together, pixels two cells apart do not.
    def correlation(shift: int) -> float:
        a, b = masks[:, 5, 2].double(), masks[:, 5, 2 + shift].double()
        return float(np.corrcoef(a.numpy(), b.numpy())[0, 1])

    assert correlation(1) > 0.7 and abs(correlation(6)) < 0.1
    with pytest.raises(ExplanationError, match="p must be"):
        rise_masks(10, 4, (8, 8), p=1.5)


def test_rise_is_the_probability_weighted_mean_mask(net: PoolNet, images: torch.Tensor) -> None:
    masks = rise_masks(40, 3, SIZE, p=0.4, seed=5)
    mean = images.mean(dim=(2, 3), keepdim=True)
    target = predicted(net, images)
    expected = torch.zeros(len(images), *SIZE)
    with torch.no_grad():
        for b in range(len(images)):
            for m in masks:
                masked = m * images[b] + (1 - m) * mean[b]
                prob = net(masked[None]).softmax(1)[0, target[b]]
                expected[b] += prob * m
    expected /= 40 * 0.4
    got = rise(net, images, normalize=False, masks=40, cells=3, p=0.4, seed=5, batch_size=7)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_rise_finds_the_half_that_matters() -> None:
    model = HalfMeanModel()
    torch.manual_seed(0)
    x = 0.5 + 0.5 * torch.rand(1, 3, 12, 12)
    heat = rise(model, x, target=0, masks=500, cells=4, baseline=0.0)
    left, right = heat[0, :, :6].mean(), heat[0, :, 6:].mean()
    assert left > right + 0.3


# ---- LIME --------------------------------------------------------------------------------


def test_lime_matches_captum_with_the_same_segmentation_and_samples(
    net: PoolNet, images: torch.Tensor
) -> None:
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import Lime

    x = images[:1]
    segments = superpixels(x, 12)
    features = int(segments.max()) + 1
    samples = lime_samples(120, features, torch.Generator().manual_seed(0))

    def perturb(inputs: torch.Tensor, **kwargs: object) -> Iterator[torch.Tensor]:
        for row in samples:
            yield row[None].long()

    def similarity(original, perturbed, kept: torch.Tensor, **kwargs: object) -> float:
        distance = 1 - torch.sqrt(kept.float().sum() / kept.numel())  # cosine to all-ones
        return float(torch.exp(-(distance**2) / (2 * 0.25**2)))

    explainer = Lime(
        softmax_of(net),
        interpretable_model=SkLearnRidge(alpha=1.0),
        similarity_func=similarity,
        perturb_func=perturb,
    )
    fill = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    reference = explainer.attribute(
        x,
        target=predicted(net, x),
        n_samples=120,
        feature_mask=segments[:, None],
        baselines=fill,
        show_progress=False,
    )
    got = lime(net, x, normalize=False, samples=120, segments=segments, seed=0, batch_size=50)
    scale = reference.abs().max()
    torch.testing.assert_close(got / scale, reference[:, 0] / scale, atol=1e-4, rtol=0)
    assert got.abs().max() > 0


def test_superpixels_and_lime_options(net: PoolNet, images: torch.Tensor) -> None:
    labels = superpixels(images, 8)
    assert labels.shape == (2, *SIZE) and labels.dtype == torch.long
    for seg in labels:  # consecutive labels, each a region of the image
        assert torch.equal(seg.unique(), torch.arange(int(seg.max()) + 1))
    torch.testing.assert_close(labels, superpixels(images, 8))
    halves = torch.zeros(SIZE, dtype=torch.long)
    halves[:, 7:] = 1
    maps = lime(net, images, normalize=False, samples=60, segments=halves)
    for m in maps:  # one value per given segment
        assert len(m[:, :7].unique()) == 1 and len(m[:, 7:].unique()) == 1
    with pytest.raises(ExplanationError, match="segments must be"):
        lime(net, images, segments=torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(ExplanationError, match="kernel_width"):
        lime(net, images, kernel_width=0)


# ---- real images -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.shared_data
def test_released_resnet20_agrees_with_the_reference_libraries(shared_data: Path) -> None:
    from captum.attr import IntegratedGradients

    model = load_backbone(
        "cifar_resnet20",
        shared_data / "checkpoints" / "cifar_resnet" / "resnet20-12fca82f.th",
        num_classes=10,
    ).eval()
    x, _ = cifar_images(shared_data, 4)
    target = predicted(model, x)
    # Grad-CAM++ on layer3 (8x8): the library min-max scales before resizing, we after.
    ours = gradcam_plus_plus(model, x, layer="layer3")
    reference = grad_cam_library("gradcam++", model, model.net.layer3, x, target)
    for a, b in zip(ours, reference, strict=True):
        assert np.corrcoef(a.flatten(), b.flatten())[0, 1] > 0.98
    ig = integrated_gradients(model, x, normalize=False, steps=16)
    reference = IntegratedGradients(model).attribute(x, target=target, n_steps=16).sum(1)
    torch.testing.assert_close(ig, reference, atol=1e-4 * float(reference.abs().max()), rtol=0)
    assert vanilla_gradient(model, x).shape == (4, 32, 32)
