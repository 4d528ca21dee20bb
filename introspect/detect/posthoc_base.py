"""What the post-hoc OOD detectors (``detect.posthoc``) share: the ``FeatureSource`` they read
(the features ``z`` entering a final linear layer ``logits = W z + b``, and that layer), the
in-distribution features they are fitted on (``Fitted``) and their base class."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from introspect.backbones.head import resolve_head
from introspect.detect.batch import images_of
from introspect.models.stage2 import IntrospectiveClassifier
from introspect.scores.model_based import logits_and_penultimate


class Penultimate:
    """The classifier ``model``'s penultimate activations and its last linear layer ``head``
    (default: ``model.head`` or the last ``nn.Linear`` executed)."""

    def __init__(self, model: nn.Module, head: nn.Linear | None = None) -> None:
        self.model, self._linear = model, head
        self.device = next(iter(model.parameters())).device

    def linear(self, images: torch.Tensor) -> nn.Linear:
        """The final linear layer (resolved on a probe of ``images``)."""
        if self._linear is None:
            head = getattr(self.model, "head", None)
            self._linear = resolve_head(self.model, head, images[:1].to(self.device))
        return self._linear

    def outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, features)`` of ``images``, detached."""
        images = images.to(self.device)
        with torch.no_grad():
            logits, h = logits_and_penultimate(self.model, images, self.linear(images))
        return logits.detach(), h.detach().flatten(1)


class IntrospectiveHidden:
    """The trained introspective head ``H``: its features are the input of its last linear layer
    (on the standardized introspective features ``r_x``), its logits ``H``'s."""

    def __init__(self, head: IntrospectiveClassifier) -> None:
        self.head = head
        self.device = head.device

    def linear(self, images: torch.Tensor) -> nn.Linear:
        """The last linear layer of ``H``."""
        last = self.head.head[-1]
        assert isinstance(last, nn.Linear)
        return last

    def outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits of H, input of its last linear layer)`` of ``images``, detached."""
        images = images.to(self.device)
        with torch.no_grad():
            logits, hidden = self.head.classify_with_hidden(self.head.features(images))
        return logits.detach(), hidden.detach()


FeatureSource = Penultimate | IntrospectiveHidden


@dataclass
class Fitted:
    """Features of the in-distribution rows of a fitting loader: ``z`` (N, D), ``logits``
    (N, C), class ``labels`` (N,) and the final ``linear`` layer."""

    z: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    linear: nn.Linear


def energy(logits: torch.Tensor) -> torch.Tensor:
    """Negative free energy ``logsumexp(logits)`` (T = 1), higher = more in-distribution."""
    return torch.logsumexp(logits, dim=1)


def quantile(values: torch.Tensor, q: float) -> float:
    """The ``q`` quantile of all ``values`` with linear interpolation (numpy's default), for
    tensors of any size."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"the quantile must lie in [0, 1], got {q}")
    ordered = values.flatten().double().sort().values
    position = q * (ordered.numel() - 1)
    low = int(position)
    high = min(low + 1, ordered.numel() - 1)
    return float(ordered[low] + (position - low) * (ordered[high] - ordered[low]))


class PosthocDetector:
    """Base of the post-hoc detectors on a ``FeatureSource``: ``fit`` collects the features of
    the in-distribution rows, ``score`` maps a batch to ``(B,)`` confidences."""

    needs_fit = True

    def __init__(self, source: FeatureSource) -> None:
        self.source = source
        self.fitted = False

    def fit(self, loader: Iterable[Any]) -> PosthocDetector:
        """Fit on ``(images, labels)`` batches (rows labelled < 0 are skipped); returns ``self``."""
        zs, logits, labels, linear = [], [], [], None
        for batch in loader:
            images, y = images_of(batch), torch.as_tensor(batch[1])
            known = y >= 0
            if known.any():
                out, z = self.source.outputs(images[known])
                zs.append(z), logits.append(out), labels.append(y[known].to(z.device))
                linear = self.source.linear(images)
        if linear is None:
            raise ValueError("fit needs in-distribution rows (labels >= 0) in loader")
        return self.fit_features(
            Fitted(torch.cat(zs), torch.cat(logits), torch.cat(labels), linear)
        )

    def fit_features(self, data: Fitted) -> PosthocDetector:
        """Fit on in-distribution features already extracted; returns ``self``."""
        with torch.no_grad():
            self._fit(data)
        self.fitted = True
        return self

    def _fit(self, data: Fitted) -> None:
        """Fit the detector's statistics (nothing by default)."""

    def score(self, batch: Any) -> torch.Tensor:
        """``(B,)`` confidences of a batch (images, or a tuple led by them)."""
        if self.needs_fit and not self.fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(loader) first")
        images = images_of(batch)
        logits, z = self.source.outputs(images)
        with torch.no_grad():
            return self.score_features(z, logits, self.source.linear(images))

    def score_features(
        self, z: torch.Tensor, logits: torch.Tensor, linear: nn.Linear
    ) -> torch.Tensor:
        """``(B,)`` confidences of features ``z`` with ``logits = linear(z)`` (features already
        extracted; ``score`` extracts them from images)."""
        raise NotImplementedError
