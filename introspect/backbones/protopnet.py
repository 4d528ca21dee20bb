"""ProtoPNet (Chen et al. 2019): prototype parts on top of a convolutional trunk of the registry.

The network maps normalized images to a feature map ``z = add_on(trunk(x))`` of shape
``(B, C, H, W)``, computes for every prototype ``p_j`` (``m`` per class) the minimum squared L2
distance ``d_j`` over the ``H x W`` patches of ``z``, turns it into the similarity
``log((d_j + 1) / (d_j + eps))`` and classifies with a bias-free linear ``last_layer`` over the
similarities. That layer is the backbone's head, so introspection applies unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet

from introspect.backbones.cifar_resnet import CifarResNet
from introspect.backbones.small_cnn import SmallCNN
from introspect.backbones.wrapper import Backbone, BackboneError


class _CifarResNetTrunk(nn.Module):
    """The convolutional part of a ``CifarResNet`` (everything before the global pool)."""

    def __init__(self, net: CifarResNet) -> None:
        super().__init__()
        self.conv1, self.bn1 = net.conv1, net.bn1
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map of normalized images ``x``."""
        out = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(out)))


def conv_trunk(net: nn.Module) -> tuple[nn.Module, int]:
    """The convolutional part of a registry network and its number of output channels.

    Supported: ``SmallCNN``, the CIFAR ResNets and torchvision ResNets; others raise a
    ``BackboneError``.
    """
    if isinstance(net, SmallCNN):
        layers = list(net.features)
        return nn.Sequential(*layers[:-2]), net.classifier.in_features  # drop pool + flatten
    if isinstance(net, CifarResNet):
        return _CifarResNetTrunk(net), net.linear.in_features
    if isinstance(net, ResNet):
        trunk = nn.Sequential(
            net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3,
            net.layer4,
        )  # fmt: skip
        return trunk, net.fc.in_features
    raise BackboneError(
        f"protopnet needs a convolutional trunk (small_cnn, cifar_resnetN or a torchvision "
        f"ResNet), not a {type(net).__name__}; set backbone.kwargs.trunk accordingly"
    )


def similarity(distances: torch.Tensor, epsilon: float) -> torch.Tensor:
    """ProtoPNet's similarity ``log((d + 1) / (d + epsilon))`` of squared distances ``d``."""
    return torch.log((distances + 1) / (distances + epsilon))


class ProtoPNet(nn.Module):
    """ProtoPNet over the convolutional part of ``base``, a registry backbone (the registry's
    ``protopnet`` factory builds it by name from ``trunk``).

    ``prototypes_per_class`` prototypes of ``prototype_dim`` channels per class; the add-on
    is 1x1 conv -> ReLU -> 1x1 conv -> sigmoid. ``input_mean``/``input_std`` are the
    trunk's normalization, used by ``load_backbone`` as this network's default. Buffers
    ``push_image`` (index into the un-augmented train split, ``-1`` before a push),
    ``push_location`` (row, column in the feature map) and ``push_box`` (``y0, y1, x0, x1``,
    pixels, end exclusive) record where each prototype was projected from.
    """

    prototype_class: torch.Tensor
    push_image: torch.Tensor
    push_location: torch.Tensor
    push_box: torch.Tensor

    def __init__(
        self,
        base: Backbone,
        num_classes: int = 10,
        prototypes_per_class: int = 10,
        prototype_dim: int = 128,
        epsilon: float = 1e-4,
        incorrect_strength: float = -0.5,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_classes", num_classes),
            ("prototypes_per_class", prototypes_per_class),
            ("prototype_dim", prototype_dim),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BackboneError(f"protopnet: {name} must be a positive integer, got {value!r}")
        if not epsilon > 0:
            raise BackboneError(f"protopnet: epsilon must be positive, got {epsilon!r}")
        self.trunk_name = base.name
        self.input_mean = tuple(base.normalize.mean.tolist())
        self.input_std = tuple(base.normalize.std.tolist())
        self.input_size = base.input_size
        self.trunk, channels = conv_trunk(base.net)
        self.add_on = nn.Sequential(
            nn.Conv2d(channels, prototype_dim, 1),
            nn.ReLU(),
            nn.Conv2d(prototype_dim, prototype_dim, 1),
            nn.Sigmoid(),
        )
        count = num_classes * prototypes_per_class
        self.epsilon = float(epsilon)
        self.prototype_vectors = nn.Parameter(torch.rand(count, prototype_dim, 1, 1))
        self.register_buffer(
            "prototype_class", torch.arange(num_classes).repeat_interleave(prototypes_per_class)
        )
        self.last_layer = nn.Linear(count, num_classes, bias=False)
        self.incorrect_strength = float(incorrect_strength)
        self.set_last_layer_connections()
        self.register_buffer("push_image", torch.full((count,), -1, dtype=torch.long))
        self.register_buffer("push_location", torch.full((count, 2), -1, dtype=torch.long))
        self.register_buffer("push_box", torch.full((count, 4), -1, dtype=torch.long))

    @property
    def num_prototypes(self) -> int:
        """Total number of prototypes."""
        return self.prototype_vectors.shape[0]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.last_layer.out_features

    def class_identity(self) -> torch.Tensor:
        """``(P, N)`` one-hot float matrix: prototype ``j`` belongs to class ``c``."""
        return F.one_hot(self.prototype_class, self.num_classes).to(self.prototype_vectors.dtype)

    @torch.no_grad()
    def set_last_layer_connections(self) -> None:
        """Last layer = 1 from each prototype to its own class, ``incorrect_strength`` otherwise."""
        own = self.class_identity().T
        self.last_layer.weight.copy_(own + self.incorrect_strength * (1 - own))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` patch features of normalized images ``x``."""
        return self.add_on(self.trunk(x))

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, P, H, W)`` squared L2 distances of every patch of ``z`` to every prototype."""
        p = self.prototype_vectors
        z2 = (z**2).sum(dim=1, keepdim=True)
        p2 = (p**2).sum(dim=(1, 2, 3)).view(1, -1, 1, 1)
        return F.relu(z2 - 2 * F.conv2d(z, p) + p2)

    def details(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything of one forward pass: ``features``, ``distances`` (maps),
        ``min_distances`` ``(B, P)``, ``similarities`` ``(B, P)`` and ``logits``."""
        z = self.feature_map(x)
        d = self.distances(z)
        min_d = d.flatten(2).amin(dim=2)
        sim = similarity(min_d, self.epsilon)
        return {
            "features": z,
            "distances": d,
            "min_distances": min_d,
            "similarities": sim,
            "logits": self.last_layer(sim),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of normalized images ``x``."""
        return self.details(x)["logits"]

    def extra_repr(self) -> str:
        return (
            f"trunk={self.trunk_name!r}, prototypes={self.num_prototypes}, epsilon={self.epsilon:g}"
        )


def is_protopnet(model: nn.Module) -> bool:
    """Whether ``model`` is a ProtoPNet or a ``Backbone`` wrapping one."""
    return isinstance(model, ProtoPNet) or isinstance(getattr(model, "net", None), ProtoPNet)
