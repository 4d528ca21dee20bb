"""``Backbone``: an image classifier taking RGB images in ``[0, 1]``, normalization included."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch import nn

from introspect.backbones.head import (
    BackboneError,
    find_head,
    forward_with_head_input,
    resolve_head,
)


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` on ``(B, C, H, W)`` images; ``mean``/``std`` are buffers."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.numel() != std_t.numel():
            raise BackboneError(
                f"mean has {mean_t.numel()} values but std has {std_t.numel()}; give one value "
                "per input channel for both"
            )
        if not bool(torch.all(std_t > 0)):
            raise BackboneError(f"std must be positive in every channel, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x`` channel-wise."""
        return (x - self.mean[:, None, None]) / self.std[:, None, None]

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


class Backbone(nn.Module):
    """An image classifier: RGB images float in ``[0, 1]`` of shape ``(B, C, H, W)`` -> logits.

    ``net`` is the raw architecture (it sees normalized images); ``normalize`` holds the
    per-channel ``mean``/``std``. The head (the ``nn.Linear`` whose input is the penultimate
    feature) is ``head`` if given, as an attribute path relative to ``net``, otherwise the last
    ``nn.Linear`` executed by a forward pass of ``net`` on zeros of shape ``input_size``.
    """

    def __init__(
        self,
        net: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        name: str = "",
        head: str | None = None,
        input_size: tuple[int, int, int] = (3, 32, 32),
    ) -> None:
        super().__init__()
        input_size = check_input_size(input_size)
        self.net = net
        self.normalize = Normalize(mean, std)
        if self.normalize.mean.numel() != input_size[0]:
            raise BackboneError(
                f"mean/std have {self.normalize.mean.numel()} values but input_size={input_size} "
                f"has {input_size[0]} channels; give one mean/std value per channel"
            )
        self.name = name
        self.input_size = input_size
        example = torch.zeros(1, *input_size)
        relative = head if head is not None else find_head(net, example)
        resolve_head(net, relative, example)  # raises HeadNotFoundError unless an nn.Linear
        self.head_path = f"net.{relative}" if relative else "net"

    @property
    def head(self) -> nn.Linear:
        """The classification head (an ``nn.Linear``)."""
        head = self.get_submodule(self.head_path)
        assert isinstance(head, nn.Linear)
        return head

    @property
    def num_classes(self) -> int:
        """Number of outputs of the head."""
        return self.head.out_features

    @property
    def feature_dim(self) -> int:
        """Dimension D of the penultimate feature (the head's input)."""
        return self.head.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images ``x`` in ``[0, 1]``."""
        return self.net(self.normalize(x))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, penultimate)`` from one forward pass; ``penultimate`` is the head's input."""
        return forward_with_head_input(self, self.head, x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, head_path={self.head_path!r}, input_size={self.input_size}"


def as_backbone(
    model: nn.Module, *, layer: str | None = None, input_size: Sequence[int] = (3, 32, 32)
) -> Backbone:
    """``model`` as a ``Backbone``: itself if it is one, else the trained classifier ``model``
    taking images as they come (no normalization), with its head at the attribute path
    ``layer`` (e.g. ``"fc"``) or, when ``None``, the last ``nn.Linear`` it executes on zeros
    of shape ``input_size``."""
    if isinstance(model, Backbone):
        if layer is not None and model.head is not model.net.get_submodule(layer):
            raise BackboneError(
                f"layer {layer!r} is not the head {model.head_path!r} of this Backbone; drop "
                "layer or build the Backbone with head=layer"
            )
        return model
    channels = check_input_size(input_size)[0]
    return Backbone(
        model,
        [0.0] * channels,
        [1.0] * channels,
        name=type(model).__name__,
        head=layer,
        input_size=tuple(input_size),
    )


def check_input_size(input_size: Sequence[int]) -> tuple[int, int, int]:
    """``input_size`` as a ``(C, H, W)`` tuple of positive ints, or a ``BackboneError``."""
    message = f"input_size must be (channels, height, width) of positive ints, got {input_size!r}"
    try:
        c, h, w = (operator.index(s) for s in input_size)
    except (TypeError, ValueError) as err:
        raise BackboneError(message) from err
    if min(c, h, w) <= 0:
        raise BackboneError(message)
    return c, h, w
