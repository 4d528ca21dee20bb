"""Backbone construction, head discovery, normalization and the name registry."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from introspect.backbones import (
    Backbone,
    BackboneError,
    HeadNotFoundError,
    available_backbones,
    load_backbone,
    register_backbone,
)
from introspect.backbones import registry as registry_module
from introspect.backbones.cifar_resnet import SubsampleShortcut

ROBUST_MEAN = (0.4914, 0.4822, 0.4465)
ROBUST_STD = (0.2471, 0.2435, 0.2616)
# The robust models through the import-path route (they are also registered by name).
RESNET4B = "introspect.backbones.robust_small:ResNet4b"
CNN_A = "introspect.backbones.robust_small:cnn_a"


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def cifar_resnet_params(depth: int, num_classes: int = 10) -> int:
    """Parameter count of a 6n+2 CIFAR ResNet with option-A shortcuts, counted by hand."""
    n = (depth - 2) // 6
    total = 9 * 3 * 16 + 2 * 16  # 3x3 stem conv without bias, BN weight and bias
    cin = 16
    for c in (16, 32, 64):
        for _ in range(n):
            total += 9 * cin * c + 2 * c + 9 * c * c + 2 * c
            cin = c
    return total + 64 * num_classes + num_classes


def test_small_cifar_resnets_are_registered_with_their_depth() -> None:
    for depth in (8, 14):
        b = load_backbone(f"cifar_resnet{depth}", num_classes=10)
        assert n_params(b) == cifar_resnet_params(depth)
        weighted = [m for m in b.net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        assert len(weighted) == depth and b.feature_dim == 64


@pytest.mark.slow
def test_cifar_resnet_parameter_counts_and_depth() -> None:
    published = {20: 0.27e6, 32: 0.46e6, 44: 0.66e6, 56: 0.85e6, 110: 1.7e6}
    for depth, rounded in published.items():
        b = load_backbone(f"cifar_resnet{depth}", num_classes=10)
        count = n_params(b)
        assert count == cifar_resnet_params(depth)
        assert abs(count - rounded) / rounded < 0.02
        weighted = [m for m in b.net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        assert len(weighted) == depth
        assert b.head_path == "net.linear" and b.feature_dim == 64 and b.num_classes == 10
        assert b.input_size == (3, 32, 32)
    assert n_params(load_backbone("cifar_resnet20", num_classes=100)) == cifar_resnet_params(
        20, 100
    )


def test_option_a_shortcut_subsamples_and_zero_pads() -> None:
    x = torch.randn(2, 16, 8, 8)
    out = SubsampleShortcut(8)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, 0::2, 0::2])
    assert not out[:, :8].any() and not out[:, 24:].any()


def test_cifar_resnet_shapes_and_parameter_names() -> None:
    b = load_backbone("cifar_resnet20")
    names = set(b.net.state_dict())
    expected = {"conv1.weight", "bn1.running_var", "layer3.2.bn2.bias", "linear.weight"}
    assert expected <= names
    assert not any("shortcut" in n for n in names)  # option A has no parameters
    assert b(torch.rand(3, 3, 32, 32)).shape == (3, 10)


@pytest.mark.parametrize("cifar_stem, spatial", [(False, 1), (True, 4)])
def test_torchvision_resnet18_at_32px(cifar_stem: bool, spatial: int) -> None:
    b = load_backbone("resnet18", num_classes=7, cifar_stem=cifar_stem, input_size=(3, 32, 32))
    assert b.head_path == "net.fc" and b.feature_dim == 512 and b.num_classes == 7
    assert (b.net.conv1.kernel_size, b.net.conv1.stride) == (
        ((3, 3), (1, 1)) if cifar_stem else ((7, 7), (2, 2))
    )
    assert isinstance(b.net.maxpool, nn.Identity) == cifar_stem
    seen: list[torch.Size] = []
    b.net.layer4.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    logits = b(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 7)
    # total stride 32 without the CIFAR stem, 8 with it
    assert seen == [torch.Size([2, 512, spatial, spatial])]
    torch.testing.assert_close(b.normalize.mean, torch.tensor([0.485, 0.456, 0.406]))


@pytest.mark.slow
def test_torchvision_non_resnet() -> None:
    b = load_backbone("mobilenet_v3_small", num_classes=5, input_size=(3, 32, 32))
    assert b.head_path == "net.classifier.3"
    assert b.feature_dim == 1024 and b.num_classes == 5
    assert b(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(BackboneError, match="ResNet family"):
        load_backbone("mobilenet_v3_small", cifar_stem=True)


def test_small_cnn_shapes_and_size() -> None:
    b = load_backbone("small_cnn")
    assert b.input_size == (3, 8, 8) and b.head_path == "net.classifier"
    assert 10_000 < n_params(b) < 100_000
    torch.testing.assert_close(b.normalize.std, torch.full((3,), 0.5))
    assert b(torch.rand(4, 3, 8, 8)).shape == (4, 10)
    assert b(torch.rand(4, 3, 32, 32)).shape == (4, 10)
    big = load_backbone("small_cnn", num_classes=3, input_size=(3, 32, 32))
    assert big.input_size == (3, 32, 32) and big.num_classes == 3


@pytest.mark.slow
def test_small_cnn_learns_digits() -> None:
    torch.manual_seed(0)
    images, labels = load_digits(return_X_y=True)
    x = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8).repeat(1, 3, 1, 1) / 16
    y = torch.tensor(labels)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    b = load_backbone("small_cnn", num_classes=10)
    epochs, batch = 5, 32
    opt = torch.optim.Adam(b.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=1e-2, total_steps=epochs * -(-len(x_tr) // batch)
    )
    b.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x_tr)).split(batch):
            loss = F.cross_entropy(b(x_tr[idx]), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    b.eval()
    with torch.no_grad():
        accuracy = (b(x_te).argmax(1) == y_te).float().mean().item()
    assert accuracy > 0.95


def test_import_path_model_with_two_layer_head() -> None:
    b = load_backbone(RESNET4B, num_classes=10, mean=ROBUST_MEAN, std=ROBUST_STD)
    assert b.head_path == "net.linear2" and b.feature_dim == 100 and b.num_classes == 10
    assert b.input_size == (3, 32, 32)
    seq = load_backbone(CNN_A, num_classes=4, mean=(0.5,) * 3, std=(1,) * 3)
    assert seq.head_path == "net.7" and seq.feature_dim == 100 and seq.num_classes == 4


@pytest.mark.slow
def test_forward_features_returns_head_input() -> None:
    torch.manual_seed(0)
    b = load_backbone("cifar_resnet20").eval()
    x = torch.rand(3, 3, 32, 32)
    logits, h = b.forward_features(x)
    net = b.net
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        z = F.relu(net.bn1(net.conv1((x - mean) / std)))
        z = net.layer3(net.layer2(net.layer1(z)))
        expected = z.mean(dim=(2, 3))
    assert h.shape == (3, 64)
    torch.testing.assert_close(h, expected)
    torch.testing.assert_close(F.linear(h, net.linear.weight, net.linear.bias), logits)


def test_forward_features_two_layer_head() -> None:
    torch.manual_seed(0)
    b = load_backbone(CNN_A, mean=(0.5,) * 3, std=(0.25,) * 3)
    x = torch.rand(2, 3, 32, 32)
    logits, h = b.forward_features(x)
    seq = b.net
    z = (x - 0.5) / 0.25
    hidden = F.relu(seq[5](F.relu(seq[2](F.relu(seq[0](z)))).flatten(1)))
    torch.testing.assert_close(h, hidden)
    torch.testing.assert_close(seq[7](hidden), logits)


def test_explicit_head_override() -> None:
    torch.manual_seed(0)
    b = load_backbone(RESNET4B, mean=ROBUST_MEAN, std=ROBUST_STD, head="linear1")
    assert b.head_path == "net.linear1" and b.head is b.net.linear1
    assert b.feature_dim == 512 and b.num_classes == 100
    x = torch.rand(2, 3, 32, 32)
    logits, h = b.forward_features(x)
    z = (x - torch.tensor(ROBUST_MEAN).view(3, 1, 1)) / torch.tensor(ROBUST_STD).view(3, 1, 1)
    net = b.net
    torch.testing.assert_close(h, net.layer2(net.layer1(F.relu(net.conv1(z)))).flatten(1))
    assert logits.shape == (2, 10)
    with pytest.raises(HeadNotFoundError, match="must be an nn.Linear"):
        load_backbone(RESNET4B, mean=ROBUST_MEAN, std=ROBUST_STD, head="layer1")
    with pytest.raises(HeadNotFoundError, match="no submodule"):
        load_backbone(RESNET4B, mean=ROBUST_MEAN, std=ROBUST_STD, head="fc")


def test_model_without_linear_head() -> None:
    net = nn.Sequential(nn.Conv2d(3, 10, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(HeadNotFoundError, match="no nn.Linear"):
        Backbone(net, (0.5,) * 3, (0.5,) * 3)


def test_normalization_inside() -> None:
    torch.manual_seed(0)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    b = load_backbone("small_cnn", mean=mean, std=std).eval()
    x = torch.rand(4, 3, 8, 8)
    manual = torch.empty_like(x)
    for c in range(3):
        manual[:, c] = (x[:, c] - mean[c]) / std[c]
    with torch.no_grad():
        torch.testing.assert_close(b(x), b.net(manual))
    assert set(dict(b.named_buffers())) >= {"normalize.mean", "normalize.std"}


def test_backbone_constructor_checks() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 100), nn.ReLU(), nn.Linear(100, 10))
    b = Backbone(net, (0.0,) * 3, (1.0,) * 3, name="mlp", input_size=(3, 4, 4))
    assert b.head_path == "net.3" and b.feature_dim == 100 and b.name == "mlp"
    assert Backbone(net, (0,) * 3, (1,) * 3, head="1", input_size=(3, 4, 4)).feature_dim == 48
    with pytest.raises(BackboneError, match="one mean/std value per channel"):
        Backbone(net, (0.0,) * 2, (1.0,) * 2, input_size=(3, 4, 4))
    with pytest.raises(BackboneError, match="std must be positive"):
        Backbone(net, (0.0,) * 3, (1.0, 0.0, 1.0), input_size=(3, 4, 4))
    with pytest.raises(BackboneError, match="input_size"):
        Backbone(net, (0.0,) * 3, (1.0,) * 3, input_size=(3, 4))  # type: ignore[arg-type]


class _SharedLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.fc(x.mean(dim=(2, 3))))


def test_head_running_twice_is_an_error() -> None:
    b = Backbone(_SharedLinear(), (0.0,) * 3, (1.0,) * 3, input_size=(3, 2, 2))
    with pytest.raises(BackboneError, match="ran 2 times"):
        b.forward_features(torch.rand(1, 3, 2, 2))


def test_wrong_num_classes() -> None:
    with pytest.raises(BackboneError, match="5 outputs but num_classes=10"):
        load_backbone(
            "torch.nn:Linear",
            num_classes=10,
            mean=(0.0,) * 3,
            std=(1.0,) * 3,
            kwargs={"in_features": 32, "out_features": 5},
        )
    with pytest.raises(BackboneError, match="disagrees"):
        load_backbone("small_cnn", num_classes=10, kwargs={"num_classes": 3})


def test_unknown_name_and_bad_import_paths() -> None:
    with pytest.raises(BackboneError, match="resnet18") as info:
        load_backbone("resnet19")
    assert "package.module:ClassOrFactory" in str(info.value)
    with pytest.raises(BackboneError, match="unknown backbone 'resnet19'"):
        load_backbone("resnet19", cifar_stem=True)
    with pytest.raises(BackboneError, match="cannot import module 'no_such_pkg.models'"):
        load_backbone("no_such_pkg.models:Net", mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(BackboneError, match="has no attribute 'Missing'.*ResNet4b"):
        load_backbone("introspect.backbones.robust_small:Missing", mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(BackboneError, match="give its input normalization as mean and std"):
        load_backbone(RESNET4B)
    with pytest.raises(BackboneError, match="backbone.kwargs"):
        load_backbone("small_cnn", kwargs={"depth": 3})
    with pytest.raises(BackboneError, match="not a torch.nn.Module"):
        load_backbone("builtins:dict", mean=(0.5,) * 3, std=(0.5,) * 3)


def test_torchvision_only_options() -> None:
    with pytest.raises(BackboneError, match="torchvision models only"):
        load_backbone("cifar_resnet20", cifar_stem=True)
    with pytest.raises(BackboneError, match="torchvision models only"):
        load_backbone("small_cnn", pretrained=True)
    with pytest.raises(BackboneError, match="use one of them"):
        load_backbone("resnet18", "weights.pt", pretrained=True)


def test_register_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))
    calls: list[dict[str, object]] = []

    @register_backbone("tiny_mlp", mean=(0.2,), std=(0.4,), input_size=(1, 2, 2))
    def tiny_mlp(num_classes: int = 3, hidden: int = 6) -> nn.Module:
        calls.append({"num_classes": num_classes, "hidden": hidden})
        return nn.Sequential(nn.Flatten(), nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    assert "tiny_mlp" in available_backbones()
    b = load_backbone("tiny_mlp", kwargs={"hidden": 5})
    assert calls == [{"num_classes": 3, "hidden": 5}]
    assert b.input_size == (1, 2, 2) and b.head_path == "net.3" and b.feature_dim == 5
    torch.testing.assert_close(b.normalize.mean, torch.tensor([0.2]))
    load_backbone("tiny_mlp", num_classes=3)
    assert calls[-1] == {"num_classes": 3, "hidden": 6}
    with pytest.raises(BackboneError, match="already registered"):
        register_backbone("tiny_mlp", mean=(0.0,), std=(1.0,), input_size=(1, 2, 2))(tiny_mlp)
    with pytest.raises(BackboneError, match="contain no ':'"):
        register_backbone("a:b", mean=(0.0,), std=(1.0,), input_size=(1, 2, 2))


def test_available_backbones_lists_every_family() -> None:
    names = available_backbones()
    assert names == sorted(names)
    expected = {"small_cnn", "resnet18", "wide_resnet50_2", "vgg11", "mobilenet_v3_small"}
    assert expected | {f"cifar_resnet{d}" for d in (20, 32, 44, 56, 110)} <= set(names)


def _no_download(url: str, dst: str, *args: object, **kwargs: object) -> None:
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_pretrained_offline_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    with pytest.raises(BackboneError, match="offline.*checkpoint=<path>"):
        load_backbone("resnet18", pretrained=True)


@pytest.mark.slow
def test_pretrained_with_new_class_count(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    torch.manual_seed(0)
    import torchvision

    released = torchvision.models.mobilenet_v3_small().state_dict()

    def fake_download(url: str, dst: str, *args: object, **kwargs: object) -> None:
        torch.save(released, dst)

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    same = load_backbone("mobilenet_v3_small", pretrained=True, input_size=(3, 32, 32))
    assert same.num_classes == 1000
    for key, value in same.net.state_dict().items():
        torch.testing.assert_close(value, released[key])
    with pytest.warns(UserWarning, match="replaced"):
        b = load_backbone(
            "mobilenet_v3_small", pretrained=True, num_classes=10, input_size=(3, 32, 32)
        )
    assert b.num_classes == 10 and b.feature_dim == 1024
    own = b.net.state_dict()
    for key, value in released.items():
        if key.startswith("classifier.3."):
            assert own[key].shape[0] == 10
        else:
            torch.testing.assert_close(own[key], value)
