"""``Introspector``: introspective features of any trained ``nn.Module`` classifier."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from introspect.backbones.head import HeadNotFoundError, find_head
from introspect.gradients.extract import IntrospectiveFeatures, check_options, extract_features
from introspect.gradients.normalize import Standardizer


def linear_layers(model: nn.Module) -> list[str]:
    """The attribute paths of every ``nn.Linear`` in ``model``, in registration order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def resolve_linear(model: nn.Module, layer: str | nn.Linear) -> nn.Linear:
    """The ``nn.Linear`` that ``layer`` names: the module itself, an attribute path
    (``"fc"``, ``"head.2"``) or a unique path suffix (``"fc"`` for ``"net.fc"``).

    Raises ``HeadNotFoundError`` listing the candidate linear layers when ``layer`` matches none,
    several, or a module that is not an ``nn.Linear``.
    """
    candidates = linear_layers(model)
    shown = ", ".join(candidates[-12:]) or "none"
    if isinstance(layer, nn.Module):
        if not isinstance(layer, nn.Linear) or all(m is not layer for m in model.modules()):
            raise HeadNotFoundError(
                f"layer must be an nn.Linear of the model; its linear layers are: {shown}"
            )
        return layer
    modules = dict(model.named_modules())
    if layer in modules:
        matches = [layer]
    else:
        matches = [name for name in modules if name.endswith("." + layer)]
    if len(matches) > 1:
        raise HeadNotFoundError(
            f"layer {layer!r} is ambiguous: it matches {', '.join(matches)}; give the full path"
        )
    if not matches or not isinstance(modules[matches[0]], nn.Linear):
        what = "matches no module" if not matches else f"is a {type(modules[matches[0]]).__name__}"
        raise HeadNotFoundError(
            f"layer {layer!r} {what}; name one of the model's linear layers: {shown}"
        )
    return modules[matches[0]]


class Introspector:
    """Introspective features ``r_x`` of a trained classifier ``model`` (any ``nn.Module`` whose
    forward returns logits), taken at its last linear layer.

    ``layer``: the head (an ``nn.Linear`` of ``model``, its attribute path or a unique path
    suffix); ``None`` finds the last ``nn.Linear`` the model executes (on the first batch).
    ``options`` are the default feature options of ``extract_features`` (``loss``, ``target``,
    ``per_class``, ``include_bias``, ``normalize``, ``standardizer``); ``features`` may override
    them per call. The model is used as it is: put it in eval mode first.

    >>> intro = Introspector(resnet)            # doctest: +SKIP
    >>> out = intro.features(images)             # doctest: +SKIP
    >>> out.features.shape, out.factors.g.shape  # doctest: +SKIP
    """

    def __init__(
        self, model: nn.Module, layer: str | nn.Linear | None = None, **options: Any
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not linear_layers(model):
            raise HeadNotFoundError(
                f"{type(model).__name__} has no nn.Linear layer to take gradients from; end the "
                "model with an nn.Linear classifier"
            )
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise TypeError(f"unknown feature options {unknown}; choose from {sorted(_OPTIONS)}")
        self.model = model
        self.options = dict(options)
        self._layer = None if layer is None else resolve_linear(model, layer)

    @property
    def layer(self) -> nn.Linear | None:
        """The head whose gradient is taken (``None`` until found on the first batch)."""
        return self._layer

    def head(self, example: torch.Tensor) -> nn.Linear:
        """The head, found with ``example`` (a batch of inputs) when not given or found yet."""
        if self._layer is None:
            self._layer = resolve_linear(self.model, find_head(self.model, example[:1]))
        return self._layer

    def features(
        self,
        images: torch.Tensor,
        *,
        materialize: bool = True,
        normalize: str | None = None,
        standardizer: Standardizer | None = None,
        **options: Any,
    ) -> IntrospectiveFeatures:
        """The ``IntrospectiveFeatures`` of a batch: head input ``h``, ``logits``, ``probs``,
        the rank-one ``factors`` and (with ``materialize``) the flattened rows ``features``,
        normalized as ``normalize`` (default: the introspector's, else ``"l2"``)."""
        merged = {**self.options, **options}
        if normalize is not None:
            merged["normalize"] = normalize
        if standardizer is not None:
            merged["standardizer"] = standardizer
        check_options(
            merged.get("loss", "ce"),
            merged.get("target", "ones"),
            merged.get("per_class", False),
            merged.get("include_bias", False),
            None,
        )
        return extract_features(
            self.model, images, head=self.head(images), materialize=materialize, **merged
        )

    def __call__(self, images: torch.Tensor, **kwargs: Any) -> IntrospectiveFeatures:
        """Same as ``features``."""
        return self.features(images, **kwargs)

    def __repr__(self) -> str:
        name = "auto" if self._layer is None else tuple(self._layer.weight.shape)
        return f"Introspector({type(self.model).__name__}, layer={name}, options={self.options})"


_OPTIONS = frozenset({"loss", "target", "per_class", "include_bias", "normalize", "standardizer"})
