"""Backbones by name: registered factories, torchvision models, or ``package.module:Callable``."""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from introspect.backbones.checkpoint import load_into_backbone, load_state_dict_file
from introspect.backbones.cifar_resnet import CIFAR_RESNET_DEPTHS, CifarResNet
from introspect.backbones.protopnet import ProtoPNet
from introspect.backbones.robust_small import (
    CNN_A_MEAN,
    CNN_A_STD,
    RESNET4B_MEAN,
    RESNET4B_STD,
    ResNet4b,
    cnn_a,
)
from introspect.backbones.small_cnn import SmallCNN
from introspect.backbones.torchvision_models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_torchvision,
    torchvision_names,
)
from introspect.backbones.wrapper import Backbone, BackboneError, check_input_size

Factory = Callable[..., nn.Module]


@dataclass(frozen=True)
class BackboneSpec:
    """A registered factory with the defaults that go with it."""

    factory: Factory
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int, int]
    head: str | None = None


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(
    name: str,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    input_size: tuple[int, int, int],
    head: str | None = None,
) -> Callable[[Factory], Factory]:
    """Decorator registering ``factory(**kwargs) -> nn.Module`` as backbone ``name``.

    ``mean``/``std`` are the default normalization of inputs in ``[0, 1]``, ``input_size`` the
    default ``(C, H, W)`` and ``head`` the default head path relative to the module (discovered
    when ``None``). The factory receives ``num_classes`` when it has a parameter of that name.
    """
    if not name or ":" in name:
        raise BackboneError(f"backbone names must be non-empty and contain no ':', got {name!r}")
    spec_args = (tuple(float(m) for m in mean), tuple(float(s) for s in std))
    size = check_input_size(input_size)

    def decorator(factory: Factory) -> Factory:
        if name in _REGISTRY:
            raise BackboneError(f"a backbone named {name!r} is already registered")
        _REGISTRY[name] = BackboneSpec(factory, *spec_args, input_size=size, head=head)
        return factory

    return decorator


def available_backbones() -> list[str]:
    """Sorted names accepted by ``load_backbone`` (registered and torchvision models)."""
    return sorted(set(_REGISTRY) | set(torchvision_names()))


def _check_options(name: str, checkpoint: object, *, cifar_stem: bool, pretrained: bool) -> bool:
    """``BackboneError`` for an unknown ``name`` or options that do not apply to it; whether
    ``name`` is a torchvision model."""
    is_torchvision = name not in _REGISTRY and ":" not in name and name in torchvision_names()
    if name not in _REGISTRY and ":" not in name and not is_torchvision:
        raise BackboneError(_unknown_name_message(name))
    if not is_torchvision and (cifar_stem or pretrained):
        raise BackboneError(
            f"cifar_stem and pretrained apply to torchvision models only, not {name!r}; set them "
            "to false (and give trained weights as a checkpoint)"
        )
    if pretrained and checkpoint is not None:
        raise BackboneError(
            "pretrained=True and a checkpoint were both given, and the checkpoint would "
            "overwrite the pretrained weights; use one of them"
        )
    return is_torchvision


def load_backbone(
    name: str,
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    head: str | None = None,
    cifar_stem: bool = False,
    pretrained: bool = False,
    trust_checkpoint: bool = False,
    input_size: tuple[int, int, int] | None = None,
    kwargs: Mapping[str, Any] | None = None,
) -> Backbone:
    """Build backbone ``name`` and load ``checkpoint`` (if given) into it.

    ``name`` is a registered name (``available_backbones()``), a torchvision model name, or
    ``"package.module:ClassOrFactory"`` (then ``mean`` and ``std`` are required). ``kwargs``
    go to the factory, plus ``num_classes`` when given and accepted. ``mean``/``std``/
    ``input_size`` override the defaults; ``head`` is the head's path relative to the network.
    ``cifar_stem`` and ``pretrained`` apply to torchvision models only. Raises
    ``BackboneError`` (or its subclass ``CheckpointError``) with the fix for bad input.
    """
    is_torchvision = _check_options(name, checkpoint, cifar_stem=cifar_stem, pretrained=pretrained)
    if input_size is not None:
        input_size = check_input_size(input_size)
    kwargs = dict(kwargs or {})
    if name in _REGISTRY:
        spec = _REGISTRY[name]
        net = _call_factory(spec.factory, name, num_classes, kwargs)
        defaults: tuple[Sequence[float], Sequence[float], tuple[int, int, int]] = (
            getattr(net, "input_mean", spec.mean),  # a network may carry its own (protopnet)
            getattr(net, "input_std", spec.std),
            getattr(net, "input_size", spec.input_size),
        )
        head = head if head is not None else spec.head
    elif is_torchvision:
        size = input_size or ((3, 32, 32) if cifar_stem else (3, 224, 224))
        net = build_torchvision(
            name,
            num_classes=num_classes,
            cifar_stem=cifar_stem,
            pretrained=pretrained,
            input_size=size,
            kwargs=kwargs,
        )
        defaults = (IMAGENET_MEAN, IMAGENET_STD, size)
    else:
        if mean is None or std is None:
            raise BackboneError(
                f"backbone {name!r} is a user model: give its input normalization as mean and std "
                "(backbone.mean / backbone.std, one value per channel for images in [0, 1])"
            )
        net = _call_factory(_import_callable(name), name, num_classes, kwargs)
        defaults = (mean, std, (3, 32, 32))

    backbone = Backbone(
        net,
        mean if mean is not None else defaults[0],
        std if std is not None else defaults[1],
        name=name,
        head=head,
        input_size=input_size or defaults[2],
    )
    if num_classes is not None and backbone.num_classes != num_classes:
        raise BackboneError(
            f"backbone {name!r} has a head {backbone.head_path!r} with {backbone.num_classes} "
            f"outputs but num_classes={num_classes}; make the model output num_classes logits "
            "(e.g. accept a num_classes argument) or fix num_classes"
        )
    if checkpoint is not None:
        state = load_state_dict_file(checkpoint, trust=trust_checkpoint)
        load_into_backbone(backbone, state, source=f"checkpoint {os.fspath(checkpoint)!r}")
    return backbone


def _call_factory(
    factory: Factory, name: str, num_classes: int | None, kwargs: dict[str, Any]
) -> nn.Module:
    if num_classes is not None and _accepts(factory, "num_classes"):
        if "num_classes" in kwargs and kwargs["num_classes"] != num_classes:
            raise BackboneError(
                f"kwargs.num_classes={kwargs['num_classes']} disagrees with "
                f"num_classes={num_classes}; give it once"
            )
        kwargs = {**kwargs, "num_classes": num_classes}
    try:
        net = factory(**kwargs)
    except TypeError as err:
        raise BackboneError(
            f"cannot build backbone {name!r} with arguments {kwargs}: {err}; fix backbone.kwargs"
        ) from err
    if not isinstance(net, nn.Module):
        raise BackboneError(
            f"backbone {name!r} returned a {type(net).__name__}, not a torch.nn.Module"
        )
    return net


def _accepts(factory: Factory, parameter: str) -> bool:
    try:
        return parameter in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


def _import_callable(name: str) -> Factory:
    module_name, _, attr = name.partition(":")
    usage = "write user models as 'package.module:ClassOrFactory'"
    if not module_name or not attr:
        raise BackboneError(f"backbone {name!r} is not an import path; {usage}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise BackboneError(
            f"cannot import module {module_name!r} of backbone {name!r}: {err}. Check the "
            "spelling and that its package is importable (installed or on PYTHONPATH)"
        ) from err
    try:
        obj = functools.reduce(getattr, attr.split("."), module)
    except AttributeError as err:
        public = sorted(n for n, v in vars(module).items() if callable(v) and n[:1] != "_")
        raise BackboneError(
            f"module {module_name!r} has no attribute {attr!r}; its callables are: "
            f"{', '.join(public[:20])}"
        ) from err
    if not callable(obj):
        raise BackboneError(f"{name!r} is a {type(obj).__name__}, not a class or factory")
    return obj


def _unknown_name_message(name: str) -> str:
    close = difflib.get_close_matches(name, available_backbones(), n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return (
        f"unknown backbone {name!r}; {hint}available_backbones() lists the registered and "
        "torchvision names. For your own model give 'package.module:ClassOrFactory' together "
        "with mean and std."
    )


def protopnet(
    num_classes: int = 10,
    trunk: str = "small_cnn",
    cifar_stem: bool = False,
    trunk_kwargs: Mapping[str, Any] | None = None,
    **options: Any,
) -> ProtoPNet:
    """ProtoPNet (``options``: see ``ProtoPNet``) over registry backbone ``trunk``, built with
    ``trunk_kwargs`` (and ``cifar_stem`` for torchvision ResNets)."""
    if trunk == "protopnet" or ":" in trunk:
        raise BackboneError(f"protopnet: trunk must be a registry CNN, got {trunk!r}")
    base = load_backbone(
        trunk, num_classes=num_classes, cifar_stem=cifar_stem, kwargs=dict(trunk_kwargs or {})
    )
    return ProtoPNet(base, num_classes=num_classes, **options)


def _register_builtins() -> None:
    cifar_mean, cifar_std = IMAGENET_MEAN, IMAGENET_STD  # what the released checkpoints used
    for depth in CIFAR_RESNET_DEPTHS:
        register_backbone(
            f"cifar_resnet{depth}", mean=cifar_mean, std=cifar_std, input_size=(3, 32, 32)
        )(functools.partial(CifarResNet, depth))
    size = (3, 32, 32)
    register_backbone("robust_resnet4b", mean=RESNET4B_MEAN, std=RESNET4B_STD, input_size=size)(
        ResNet4b
    )
    register_backbone("robust_cnn_a", mean=CNN_A_MEAN, std=CNN_A_STD, input_size=size)(cnn_a)
    register_backbone("small_cnn", mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(3, 8, 8))(SmallCNN)
    register_backbone(  # normalization and input size follow the trunk (see ProtoPNet)
        "protopnet", mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(3, 32, 32), head="last_layer"
    )(protopnet)


_register_builtins()
