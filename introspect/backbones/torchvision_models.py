"""torchvision classification models by name, optionally pretrained or with a CIFAR stem."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import ResNet

from introspect.backbones.head import find_head
from introspect.backbones.wrapper import BackboneError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def torchvision_names() -> list[str]:
    """Names of torchvision's image classification models (``resnet18``, ``vgg11``, ...)."""
    return list(torchvision.models.list_models(module=torchvision.models))


def build_torchvision(
    name: str,
    *,
    num_classes: int | None,
    cifar_stem: bool,
    pretrained: bool,
    input_size: tuple[int, int, int],
    kwargs: Mapping[str, Any],
) -> nn.Module:
    """The torchvision classifier ``name``.

    ``pretrained`` loads torchvision's default weights (downloaded once into the torch hub
    cache). If ``num_classes`` differs from the weights' class count, the head is replaced by a
    freshly initialized ``nn.Linear`` (with a warning); likewise ``cifar_stem`` (ResNets only)
    replaces the first convolution by a fresh 3x3 stride-1 one and removes the max-pool.
    """
    if not pretrained:
        extra = {} if num_classes is None else {"num_classes": num_classes}
        net = torchvision.models.get_model(name, weights=None, **extra, **kwargs)
    else:
        net = _pretrained(name, num_classes, input_size, kwargs)
    if cifar_stem:
        _set_cifar_stem(name, net, pretrained)
    return net


def _pretrained(
    name: str, num_classes: int | None, input_size: tuple[int, int, int], kwargs: Mapping[str, Any]
) -> nn.Module:
    weights = torchvision.models.get_model_weights(name).DEFAULT
    try:
        net = torchvision.models.get_model(name, weights=weights, **kwargs)
    except OSError as err:
        raise BackboneError(
            f"could not download the pretrained torchvision weights of {name!r} ({weights.url}): "
            f"{err}. This machine may be offline: download the file elsewhere and pass it as "
            "checkpoint=<path> (backbone.checkpoint) with pretrained=false, or place it in the "
            f"torch hub cache ({torch.hub.get_dir()}/checkpoints)"
        ) from err
    trained_classes = len(weights.meta["categories"])
    if num_classes is not None and num_classes != trained_classes:
        path = find_head(net, torch.zeros(1, *input_size))
        old = net.get_submodule(path)
        assert isinstance(old, nn.Linear)
        warnings.warn(
            f"pretrained {name} predicts {trained_classes} classes; its head {path!r} is replaced "
            f"by a freshly initialized nn.Linear({old.in_features}, {num_classes})",
            stacklevel=3,
        )
        _replace(net, path, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return net


def _set_cifar_stem(name: str, net: nn.Module, pretrained: bool) -> None:
    if not isinstance(net, ResNet):
        raise BackboneError(
            f"cifar_stem=True applies to the ResNet family (resnet*, wide_resnet*, resnext*), "
            f"not {name!r}; set cifar_stem=false"
        )
    if pretrained:
        warnings.warn(
            f"cifar_stem=True replaces the pretrained first convolution of {name} by a freshly "
            "initialized 3x3 stride-1 convolution",
            stacklevel=3,
        )
    old = net.conv1
    net.conv1 = nn.Conv2d(old.in_channels, old.out_channels, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent), child, new)
