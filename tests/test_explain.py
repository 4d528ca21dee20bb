"""Explanation maps against direct computations from their definitions (docs/guides/)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import lightning.pytorch.loggers
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from introspect.backbones import Backbone, load_backbone
from introspect.cli.explain import explain_main
from introspect.config import load_config, save_config
from introspect.explain import (
    MAP_METHODS,
    ExplanationError,
    contrast_cam,
    counterfactual_cam,
    deconvnet,
    explanation_figure,
    gradcam,
    guided_backprop,
    guided_gradcam,
    occlusion,
    vanilla_gradient,
    voice,
)
from introspect.jobs import job
from introspect.jobs.settings import train_settings
from introspect.stages.stage1 import build_backbone, build_data

METHODS = dict(MAP_METHODS)
NUM_CLASSES = 4
SIZE = (10, 14)  # non-square on purpose


class TinyNet(nn.Module):
    """conv-BN-ReLU -> strided conv-ReLU -> global average pool -> linear.

    ``relu="module"`` uses ``nn.ReLU`` modules (the first one in place); ``"functional"`` uses
    ``F.relu`` and a statement-level ``Tensor.relu_``.
    """

    def __init__(self, relu: str = "module") -> None:
        super().__init__()
        self.relu = relu
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(8, NUM_CLASSES)
        with torch.no_grad():
            self.bn1.running_mean.uniform_(-0.2, 0.2)
            self.bn1.running_var.uniform_(0.5, 1.5)
            self.bn1.weight.uniform_(0.5, 1.5)
            self.bn1.bias.uniform_(-0.2, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn1(self.conv1(x))
        if self.relu == "module":
            h = self.conv2(self.relu1(h))
            h = self.relu2(h)
        else:
            h = self.conv2(F.relu(h))
            h.relu_()
        return self.fc(h.mean(dim=(2, 3)))


def manual_forward(
    net: TinyNet, x: torch.Tensor, relu: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """TinyNet's eval-mode forward written out with functional ops and a pluggable ReLU."""
    bn = net.bn1
    h = F.conv2d(x, net.conv1.weight, net.conv1.bias, padding=1)
    h = F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    h = relu(h)
    h = relu(F.conv2d(h, net.conv2.weight, net.conv2.bias, stride=2, padding=1))
    return F.linear(h.mean(dim=(2, 3)), net.fc.weight, net.fc.bias)


def guided_relu(h: torch.Tensor) -> torch.Tensor:
    """ReLU whose backward is ``[h > 0] [g > 0] g`` (mask from the input, then a hook)."""
    out = h * (h > 0).to(h.dtype)
    out.register_hook(lambda g: g.clamp(min=0))
    return out


def deconv_relu(h: torch.Tensor) -> torch.Tensor:
    """ReLU in the forward pass, backward ``[g > 0] g`` (identity through, then a hook)."""
    out = h + (h.clamp(min=0) - h).detach()
    out.register_hook(lambda g: g.clamp(min=0))
    return out


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-image min-max scaling written out; constant maps become zeros."""
    out = torch.zeros_like(maps)
    for b, m in enumerate(maps):
        if m.max() > m.min():
            out[b] = (m - m.min()) / (m.max() - m.min())
    return out


def reference_cam(
    net: nn.Module,
    x: torch.Tensor,
    layer: nn.Module,
    scalar: Callable[[torch.Tensor, int], torch.Tensor],
    sign: float = 1.0,
) -> torch.Tensor:
    """ReLU(sum_k sign * alpha_k A^k), one backward pass per image, upsampled bilinearly."""
    store: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    net.eval()
    try:
        logits = net(x.clone().requires_grad_(True))
    finally:
        handle.remove()
    acts = store["a"]
    maps = []
    for b in range(len(x)):
        (grad,) = torch.autograd.grad(scalar(logits, b), acts, retain_graph=True)
        alpha = grad[b].mean(dim=(1, 2))
        maps.append(F.relu(sign * (alpha[:, None, None] * acts[b]).sum(dim=0)))
    small = torch.stack(maps).detach()
    return F.interpolate(small[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[
        :, 0
    ]


def reference_input_grad(
    net: TinyNet, x: torch.Tensor, target: torch.Tensor, relu: Callable | None = None
) -> torch.Tensor:
    """d z_target / dx per image, through ``manual_forward`` with ``relu`` (or the module)."""
    net.eval()
    grads = []
    for b in range(len(x)):
        xb = x[b : b + 1].clone().requires_grad_(True)
        logits = net(xb) if relu is None else manual_forward(net, xb, relu)
        (grad,) = torch.autograd.grad(logits[0, target[b]], xb)
        grads.append(grad[0])
    return torch.stack(grads)


def logit_of(target: torch.Tensor) -> Callable[[torch.Tensor, int], torch.Tensor]:
    return lambda z, b: z[b, target[b]]


def ce_of(contrast: torch.Tensor) -> Callable[[torch.Tensor, int], torch.Tensor]:
    return lambda z, b: F.cross_entropy(z[b : b + 1], contrast[b : b + 1])


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """These models are tiny: a second intra-op thread only adds synchronization (and stalls
    badly when other processes hold the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(3, 3, *SIZE)


def predictions(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return net(x)


def test_gradcam_matches_definition(net: TinyNet, images: torch.Tensor) -> None:
    target = predictions(net, images).argmax(1)
    expected = reference_cam(net, images, net.conv2, logit_of(target))
    net.train()  # the function must switch to eval mode itself
    raw = gradcam(net, images, normalize=False)
    assert raw.shape == (3, *SIZE)
    torch.testing.assert_close(raw, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gradcam(net, images), minmax(expected), atol=1e-5, rtol=1e-4)
    other = torch.tensor([1, 2, 3])
    torch.testing.assert_close(
        gradcam(net, images, target=other, normalize=False),
        reference_cam(net, images, net.conv2, logit_of(other)),
        atol=1e-5,
        rtol=1e-4,
    )
    three = torch.full((3,), 3)
    torch.testing.assert_close(
        gradcam(net, images, target=3, normalize=False),
        reference_cam(net, images, net.conv2, logit_of(three)),
        atol=1e-5,
        rtol=1e-4,
    )


def test_counterfactual_cam_negates_the_weights(net: TinyNet, images: torch.Tensor) -> None:
    target = torch.tensor([0, 1, 2])
    expected = reference_cam(net, images, net.conv2, logit_of(target), sign=-1.0)
    got = counterfactual_cam(net, images, target=target, normalize=False)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert got.abs().sum() > 0


def test_contrast_cam_uses_cross_entropy_of_the_contrast_class(
    net: TinyNet, images: torch.Tensor
) -> None:
    contrast = torch.tensor([3, 0, 1])
    expected = reference_cam(net, images, net.conv2, ce_of(contrast))
    got = contrast_cam(net, images, contrast=contrast, normalize=False)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert got.abs().sum() > 0


def test_contrast_cam_defaults_to_the_second_highest_logit(
    net: TinyNet, images: torch.Tensor
) -> None:
    logits = predictions(net, images)
    second = logits.topk(2, dim=1).indices[:, 1]
    expected = reference_cam(net, images, net.conv2, ce_of(second))
    torch.testing.assert_close(
        contrast_cam(net, images, normalize=False), expected, atol=1e-5, rtol=1e-4
    )
    # with an explicit target P, the default Q is the best class other than P
    target = logits.argmin(1)
    best_other = logits.argmax(1)
    torch.testing.assert_close(
        contrast_cam(net, images, target=target, normalize=False),
        reference_cam(net, images, net.conv2, ce_of(best_other)),
        atol=1e-5,
        rtol=1e-4,
    )


def test_vanilla_gradient_is_max_abs_input_gradient(net: TinyNet, images: torch.Tensor) -> None:
    target = predictions(net, images).argmax(1)
    expected = reference_input_grad(net, images, target).abs().amax(dim=1)
    got = vanilla_gradient(net, images, normalize=False)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(vanilla_gradient(net, images), minmax(expected))


@pytest.mark.parametrize("relu", ["module", "functional"])
def test_guided_backprop_matches_hand_masked_backward(relu: str, images: torch.Tensor) -> None:
    torch.manual_seed(0)
    net = TinyNet(relu)
    target = predictions(net, images).argmax(1)
    guided = reference_input_grad(net, images, target, guided_relu)
    plain = reference_input_grad(net, images, target)
    got = guided_backprop(net, images, normalize=False)
    torch.testing.assert_close(got, guided.abs().amax(dim=1), atol=1e-6, rtol=1e-4)
    assert not torch.allclose(guided, plain)  # the guidance changed something


@pytest.mark.parametrize("relu", ["module", "functional"])
def test_deconvnet_rectifies_gradients_at_every_relu(relu: str, images: torch.Tensor) -> None:
    torch.manual_seed(0)
    net = TinyNet(relu)
    target = torch.tensor([2, 0, 1])
    expected = reference_input_grad(net, images, target, deconv_relu).abs().amax(dim=1)
    got = deconvnet(net, images, target=target, normalize=False)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)


def test_guided_gradcam_is_the_pixelwise_product(net: TinyNet, images: torch.Tensor) -> None:
    target = predictions(net, images).argmax(1)
    guided = reference_input_grad(net, images, target, guided_relu).abs().amax(dim=1)
    cam = reference_cam(net, images, net.conv2, logit_of(target))
    got = guided_gradcam(net, images, normalize=False)
    torch.testing.assert_close(got, guided * cam, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(guided_gradcam(net, images), minmax(guided * cam))


def test_guided_methods_need_a_relu() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.LazyLinear(2))
    x = torch.rand(1, 3, 6, 6)
    model(x)
    with pytest.raises(ExplanationError, match="no ReLU"):
        guided_backprop(model, x)


def test_occlusion_matches_brute_force(net: TinyNet, images: torch.Tensor) -> None:
    patch, stride, baseline = 4, 3, 0.5
    net.eval()
    with torch.no_grad():
        probs = net(images).softmax(1)
        target = probs.argmax(1)
        expected = torch.zeros(len(images), *SIZE)
        # offsets every `stride`, plus one flush with the border: rows 0,3,6; cols 0,3,6,9,10
        for b in range(len(images)):
            heat, count = torch.zeros(SIZE), torch.zeros(SIZE)
            for top in (0, 3, 6):
                for left in (0, 3, 6, 9, 10):
                    occluded = images[b : b + 1].clone()
                    occluded[..., top : top + patch, left : left + patch] = baseline
                    drop = probs[b, target[b]] - net(occluded).softmax(1)[0, target[b]]
                    heat[top : top + patch, left : left + patch] += drop
                    count[top : top + patch, left : left + patch] += 1
            expected[b] = heat / count
    got = occlusion(
        net,
        images,
        normalize=False,
        patch=patch,
        stride=stride,
        baseline=baseline,
        batch_size=7,  # chunks straddle images
    )
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)
    assert got.abs().sum() > 0
    with pytest.raises(ExplanationError, match="stride"):
        occlusion(net, images, stride=0)


def test_voice_matches_definition(net: TinyNet, images: torch.Tensor) -> None:
    predicted = predictions(net, images).argmax(1)
    contrast_maps = {
        q: minmax(reference_cam(net, images, net.conv2, ce_of(torch.full((3,), q))))
        for q in range(NUM_CLASSES)
    }
    explanation = minmax(reference_cam(net, images, net.conv2, logit_of(predicted)))
    result = voice(net, images)
    for b in range(len(images)):
        others = torch.stack([contrast_maps[q][b] for q in range(NUM_CLASSES) if q != predicted[b]])
        assert len(others) == NUM_CLASSES - 1
        u = others.var(dim=0, unbiased=False)
        torch.testing.assert_close(result.uncertainty[b], u, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(result.explanation[b], explanation[b], atol=1e-5, rtol=1e-4)
        # the threshold applies to the uncertainty min-max normalized per image
        high_u, high_e = minmax(u[None])[0] > 0.1, explanation[b] > 0.1
        union = (high_u | high_e).sum()
        iou = (high_u & high_e).sum() / union if union > 0 else torch.tensor(0.0)
        assert result.iou[b].item() == pytest.approx(iou.item(), abs=1e-6)
        snr = u.mean() / u.std(unbiased=False)
        assert result.snr[b].item() == pytest.approx(snr.item(), rel=1e-4)
    assert result.uncertainty.shape == result.explanation.shape == (3, *SIZE)
    assert result.iou.shape == result.snr.shape == (3,)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_shapes_range_and_raw_values(name: str, net: TinyNet, images: torch.Tensor) -> None:
    method = METHODS[name]
    maps = method(net, images)
    assert maps.shape == (3, *SIZE) and maps.dtype == torch.float32
    assert maps.device == images.device
    assert maps.min() >= 0 and maps.max() <= 1
    peaks = maps.flatten(1).amax(1)
    assert set(peaks.tolist()) <= {0.0, 1.0} and peaks.max() == 1  # 0: an all-zero map
    raw = method(net, images, normalize=False)
    assert raw.shape == (3, *SIZE)
    torch.testing.assert_close(maps, minmax(raw), atol=1e-5, rtol=1e-4)


# RISE sums the masks weighted by the probability: with a constant probability its map is the
# masks' (uneven) coverage, not a constant.
@pytest.mark.parametrize("name", sorted(set(METHODS) - {"rise"}))
def test_constant_maps_become_zeros_not_nan(name: str, images: torch.Tensor) -> None:
    torch.manual_seed(0)
    net = TinyNet()
    with torch.no_grad():
        net.fc.weight.zero_()  # logits no longer depend on the image: every map is constant
    maps = METHODS[name](net, images)
    assert not maps.isnan().any()
    assert (maps == 0).all()


class Reordered(nn.Module):
    """Convolutions registered in another order than they run, and one that never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.late = nn.Conv2d(4, 5, 3, padding=1)
        self.early = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.unused = nn.Conv2d(5, 5, 1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.late(F.relu(self.early(x))))
        return self.fc(h.mean(dim=(2, 3)))


def test_default_layer_is_the_last_executed_conv(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = Reordered()
    default = gradcam(model, images, normalize=False)
    torch.testing.assert_close(default, gradcam(model, images, layer="late", normalize=False))
    assert not torch.allclose(default, gradcam(model, images, layer="early", normalize=False))


def test_layer_as_module_path_or_under_net(net: TinyNet, images: torch.Tensor) -> None:
    by_module = gradcam(net, images, layer=net.conv1, normalize=False)
    torch.testing.assert_close(by_module, gradcam(net, images, layer="conv1", normalize=False))
    target = predictions(net, images).argmax(1)
    torch.testing.assert_close(
        by_module, reference_cam(net, images, net.conv1, logit_of(target)), atol=1e-5, rtol=1e-4
    )
    wrapped = Backbone(net, mean=[0.5] * 3, std=[0.25] * 3, input_size=(3, *SIZE))
    under_net = gradcam(wrapped, images, layer="conv1", normalize=False)
    for same in ("net.conv1", net.conv1):
        torch.testing.assert_close(under_net, gradcam(wrapped, images, layer=same, normalize=False))
    nested = nn.Sequential(nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU()), nn.Flatten())
    nested.append(nn.LazyLinear(2))
    nested(images)
    torch.testing.assert_close(
        gradcam(nested, images, layer="0.0"), gradcam(nested, images, layer=nested[0][0])
    )


def test_bad_layers_raise_clear_value_errors(images: torch.Tensor) -> None:
    model = Reordered()
    with pytest.raises(ValueError, match="no layer 'lat'.*'late'"):
        gradcam(model, images, layer="lat")
    with pytest.raises(ValueError, match="'unused' did not run"):
        gradcam(model, images, layer="unused")
    with pytest.raises(ValueError, match="'fc' outputs \\(3, 3\\), not a"):
        gradcam(model, images, layer="fc")
    with pytest.raises(ValueError, match="class indices must lie in"):
        gradcam(model, images, target=3)
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        gradcam(nn.Sequential(nn.Flatten(), nn.Linear(3 * 10 * 14, 2)), images)


class Bomb(nn.Module):
    """Raises in its forward pass when armed."""

    armed = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            raise RuntimeError("boom")
        return x


def _no_hooks_left(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks
        and not m._forward_pre_hooks
        and not m._backward_hooks
        and not m._backward_pre_hooks
        for m in model.modules()
    )


@pytest.mark.parametrize("name", [*sorted(METHODS), "voice"])
def test_hooks_modes_and_flags_restored_even_on_error(name: str, images: torch.Tensor) -> None:
    torch.manual_seed(0)
    net = TinyNet()
    bomb = Bomb()
    model = nn.Sequential(net, bomb)
    model.train()
    net.bn1.eval()  # a mixed pattern of modes must come back exactly
    net.conv1.weight.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    method = voice if name == "voice" else METHODS[name]
    with pytest.raises(RuntimeError, match="boom"):
        method(model, images, layer="0.conv2")
    assert _no_hooks_left(model)
    assert torch._C._len_torch_function_stack() == 0  # no ReLU override left active
    assert [m.training for m in model.modules()] == modes
    bomb.armed = False
    with pytest.raises(ValueError, match="class indices"):
        method(model, images, target=NUM_CLASSES)  # fails after the forward pass
    assert _no_hooks_left(model)
    assert [m.training for m in model.modules()] == modes
    method(model, images)
    assert _no_hooks_left(model)
    assert torch._C._len_torch_function_stack() == 0
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", [*sorted(METHODS), "voice"])
def test_works_inside_inference_mode(name: str, net: TinyNet, images: torch.Tensor) -> None:
    method = voice if name == "voice" else METHODS[name]
    expected = method(net, images)
    with torch.inference_mode():
        frozen = images.clone()  # an inference tensor, as in Lightning's test loop
        got = method(net, frozen)
    torch.testing.assert_close(got, expected)  # tensors, or VoiceResult tuples of tensors


def test_cifar_resnet20_default_layer_and_layer3() -> None:
    torch.manual_seed(0)
    model = load_backbone("cifar_resnet20", num_classes=10)
    x = torch.rand(2, 3, 32, 32)
    default = gradcam(model, x)
    by_conv = gradcam(model, x, layer="layer3.2.conv2")  # the last conv the forward runs
    torch.testing.assert_close(default, by_conv)
    block = gradcam(model, x, layer="layer3")
    torch.testing.assert_close(block, gradcam(model, x, layer=model.net.layer3))
    for maps in (default, block, contrast_cam(model, x, layer="layer3")):
        assert maps.shape == (2, 32, 32) and 0 <= maps.min() and maps.max() == 1
    # the network uses F.relu, which guided backpropagation still reaches
    guided = guided_backprop(model, x, normalize=False)
    assert not torch.allclose(guided, vanilla_gradient(model, x, normalize=False))
    result = voice(model, x, layer="layer3")
    assert result.uncertainty.shape == (2, 32, 32) and result.snr.isfinite().all()


def test_figure_is_a_png(net: TinyNet, images: torch.Tensor, tmp_path: Path) -> None:
    path = explanation_figure(
        net, images, ["cat", "dog", "ship", "frog"], tmp_path / "sub" / "fig.png", labels=[0, 1, 2]
    )
    assert path == tmp_path / "sub" / "fig.png" and path.is_file()
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG"
    with Image.open(path) as image:
        assert image.size[0] > image.size[1] > 0  # five columns, three rows
    with pytest.raises(ValueError, match="class names"):
        explanation_figure(net, images, ["cat"], tmp_path / "x.png")


@pytest.mark.parametrize("rows", [1, 3])
def test_figure_has_a_colour_bar_a_title_and_fits(
    net: TinyNet, images: torch.Tensor, tmp_path: Path, monkeypatch, rows: int
) -> None:
    """The map figures name the run, each image and each method, give the map scale in a
    colour bar, and draw every title inside the figure."""
    from introspect.explain import figure as module
    from introspect.explain.methods import MAP_METHODS
    from tests.conftest import assert_drawn_inside

    drawn = []
    save = module._save
    monkeypatch.setattr(module, "_save", lambda fig, path: drawn.append(fig) or save(fig, path))
    names = [f"test image {i}" for i in range(rows)]
    title = "run a-rather-long-run-directory-name-2026-12-07-seed0"
    classes = ["cat", "dog", "ship", "frog"]
    explanation_figure(
        net, images[:rows], classes, tmp_path / "p.png", title=title, image_names=names
    )
    methods = {k: MAP_METHODS[k] for k in ("gradcam", "vanilla_gradient")}
    module.methods_figure(
        net, images[:rows], classes, tmp_path / "m.png", methods, title=title, image_names=names
    )
    assert len(drawn) == 2
    for fig, method_names in zip(
        drawn,
        (("Grad-CAM", "Contrast-CAM", "Counterfactual-CAM"), ("gradcam", "vanilla gradient")),
        strict=True,
    ):
        assert_drawn_inside(fig)
        heading = " ".join(fig.get_suptitle().split())
        assert heading.startswith(title)
        bars = [ax for ax in fig.axes if ax.get_ylabel() == "map value (min-max normalized)"]
        assert len(bars) == 1 and bars[0].get_ylim() == (0.0, 1.0)
        titles = [ax.get_title() for ax in fig.axes]
        for i, name in enumerate(names):
            assert titles[i * (len(titles) - 1) // rows].startswith(name)
        for method in method_names:
            assert sum(t.startswith(method) for t in titles) >= rows
    with pytest.raises(ValueError, match="one name per image"):
        explanation_figure(net, images, classes, tmp_path / "x.png", image_names=["one"])


def _call(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = explain_main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_main_errors_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from introspect.cli import explain as cli
    from introspect.data.module import SPLITS

    assert cli.SPLITS == SPLITS
    for argv, message in (
        ([f"run={tmp_path / 'missing'}"], "does not exist"),
        ([f"run={tmp_path}", "n=0"], "n must be a positive integer"),
        ([f"run={tmp_path}", "split=dev"], "split must be one of"),
        ([f"run={tmp_path}"], "config.yaml not found"),
        (["n=3"], "run=runs/<name>"),
    ):
        code, out, err = _call(argv, capsys)
        assert code == 2 and out == ""
        assert err.startswith("error: ") and message in err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert _call([], capsys)[0] == 2
    assert _call(["--help"], capsys)[0] == 0


class FakeWandbLogger:
    """Records what ``explain`` logs to W&B."""

    def __init__(self) -> None:
        self.logged: list[tuple[str, list[str]]] = []
        self.status: str | None = None

    def log_image(self, key: str, images: list[str]) -> None:
        self.logged.append((key, images))

    def finalize(self, status: str) -> None:
        self.status = status


def test_explain_main_draws_a_finished_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    cfg = load_config(
        ["data=synthetic", "data.num_samples=40", "data.image_size=8", f"run.dir={run_dir}"]
    )
    dm = build_data(train_settings(cfg).stage1)
    backbone = build_backbone(train_settings(cfg).stage1, dm.num_classes, dm.image_shape)
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": backbone.state_dict()}, run_dir / "checkpoints" / "stage1-last.ckpt")
    save_config(cfg, run_dir / "config.yaml")
    wandb = FakeWandbLogger()
    built: list[Path] = []
    monkeypatch.setattr(lightning.pytorch.loggers, "WandbLogger", FakeWandbLogger)
    monkeypatch.setattr(job, "job_loggers", lambda cfg, path: built.append(path) or [wandb])

    code, out, err = _call([f"run={run_dir}", "n=3"], capsys)
    assert code == 0, err
    assert out.strip() == str(run_dir / "explanations.png")
    with Image.open(run_dir / "explanations.png") as image:
        image.verify()
    assert built == []  # logger.wandb is false in this run

    code, out, err = _call([f"run={run_dir}", "n=1", "logger.wandb=true"], capsys)
    assert code == 0, err
    assert built == [run_dir] and wandb.status == "success"
    assert wandb.logged == [("explanations", [str(run_dir / "explanations.png")])]

    target = tmp_path / "elsewhere.png"
    code, out, err = _call([f"run={run_dir}", "n=2", "split=val", f"out={target}"], capsys)
    assert code == 0 and target.is_file()

    code, out, err = _call([f"run={run_dir}", "layer=nope"], capsys)
    assert code == 2 and "no layer 'nope'" in err and err.count("\n") == 1
