"""One explainer protocol over the map methods (Captum's ``attribute`` call) and a registry to
build them by name (``create_explainer``)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from introspect.explain.core import Target
from introspect.explain.layers import LayerSpec
from introspect.explain.methods import MAP_METHODS, REFERENCES, MapMethod


@runtime_checkable
class Explainer(Protocol):
    """Explains a classifier's decisions on a batch as one map per image."""

    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        """``(B, 1, H, W)`` maps of ``inputs`` ``(B, C, H, W)`` for the ``target`` classes."""
        ...


class MapExplainer:
    """A map method of ``explain`` (``method``) bound to ``model``, ``layer`` and its options.

    ``attribute`` returns the method's ``(B, H, W)`` maps as ``(B, 1, H, W)`` (Captum's layout
    of a map shared by all channels, e.g. ``LayerAttribution.interpolate``'s), min-max
    normalized per image unless ``normalize=False``. ``target``: ``None`` (the predicted
    class), a class index or one index per image.
    """

    def __init__(
        self,
        method: MapMethod,
        model: nn.Module,
        layer: LayerSpec = None,
        *,
        normalize: bool = True,
        **options: Any,
    ) -> None:
        self.method, self.model, self.layer = method, model, layer
        self.normalize, self.options = normalize, options

    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        """``(B, 1, H, W)`` maps of ``inputs`` for ``target``."""
        maps = self.method(
            self.model,
            inputs,
            layer=self.layer,
            target=target,
            normalize=self.normalize,
            **self.options,
        )
        return maps.unsqueeze(1)

    def __repr__(self) -> str:
        return f"MapExplainer({self.method.__name__}, layer={self.layer!r})"


EXPLAINERS: dict[str, MapMethod] = {**MAP_METHODS, **REFERENCES}


def list_explainers() -> list[str]:
    """The names ``create_explainer`` accepts, sorted."""
    return sorted(EXPLAINERS)


def create_explainer(
    name: str, model: nn.Module, layer: LayerSpec = None, **options: Any
) -> MapExplainer:
    """The map method ``name`` (e.g. ``"gradcam"``, ``"integrated_gradients"``) as an
    ``Explainer`` of ``model``; ``layer`` is the layer of the class-activation methods (ignored
    by the input-space ones), ``options`` the method's own (``normalize``, ``steps``, ...)."""
    if name not in EXPLAINERS:
        raise ValueError(
            f"unknown explainer {name!r}; choose one of {', '.join(list_explainers())}"
        )
    return MapExplainer(EXPLAINERS[name], model, layer, **options)
