"""Mahalanobis confidences of several layers (Lee et al., NeurIPS 2018): a class-conditional
Gaussian with tied covariance per layer, fitted on per-channel means of the activations."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from introspect.detect.features import layer_features, pooled
from introspect.scores.model_based import Mahalanobis, perturb_towards


class LayerMahalanobis:
    """One ``Mahalanobis`` per layer of ``layers`` (see ``layer_features``)."""

    def __init__(self, num_classes: int, layers: Sequence[str]) -> None:
        self.layers = list(layers)
        self.per_layer = [Mahalanobis(num_classes) for _ in self.layers]

    def fit(self, model: nn.Module, loader: Iterable[tuple | list]) -> LayerMahalanobis:
        """Accumulate the pooled activations of every ``(images, labels, ...)`` batch."""
        device = next(iter(model.parameters())).device
        with torch.inference_mode(False), torch.no_grad():
            for batch in loader:
                _, acts = layer_features(model, batch[0].to(device), self.layers)
                for gaussian, act in zip(self.per_layer, acts, strict=True):
                    gaussian.update(pooled(act), batch[1])
        for gaussian in self.per_layer:
            gaussian.finalize()
        return self

    def _confidence(self, model: nn.Module, x: torch.Tensor, index: int) -> torch.Tensor:
        _, acts = layer_features(model, x, [self.layers[index]])
        return self.per_layer[index].score(pooled(acts[0]))

    def scores(self, model: nn.Module, images: torch.Tensor, *, eps: float = 0.0) -> torch.Tensor:
        """``(B, L)`` confidences (minus the smallest squared Mahalanobis distance) of every
        layer; with ``eps > 0`` each layer's after its own input preprocessing
        ``x + eps * sign(grad_x confidence_l(x))`` (pixel units, as ``Mahalanobis``)."""
        columns = []
        with torch.inference_mode(False):
            for index in range(len(self.layers)):

                def confidence(x: torch.Tensor, index: int = index) -> torch.Tensor:
                    return self._confidence(model, x, index)

                x = perturb_towards(confidence, images, eps) if eps else images
                with torch.no_grad():
                    columns.append(confidence(x.clone() if x.is_inference() else x))
        return torch.stack(columns, dim=1)
