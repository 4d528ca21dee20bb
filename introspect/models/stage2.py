"""Stage 2: an MLP on a frozen backbone's features: introspective gradients or the control."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from introspect.gradients import extract_with_outputs
from introspect.gradients.normalize import normalize_features
from introspect.models.mlp import MLP
from introspect.models.optim import build_optimizer


def freeze(backbone: nn.Module) -> nn.Module:
    """Put ``backbone`` in eval mode with no parameter requiring grad; returns it."""
    backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone


class StageTwoClassifier(L.LightningModule):
    """Frozen backbone -> features -> MLP ``H``, trained with cross-entropy on the true labels.

    Training and validation batches are ``(features, labels)`` (features come from the cache);
    ``forward(images)`` runs the whole chain on images. ``normalize="standardize"`` uses a
    per-feature mean/std fitted on the training features with ``fit_standardizer``; ``"l2"`` and
    ``"none"`` are applied when features are computed.
    """

    kind = "stage2"

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_classes: int,
        in_dim: int,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
        activation: str = "relu",
        optim: Mapping[str, Any] | None = None,
        normalize: str = "l2",
    ) -> None:
        super().__init__()
        if normalize not in ("none", "l2", "standardize"):
            raise ValueError(f"normalize must be none, l2 or standardize, got {normalize!r}")
        self.backbone = freeze(backbone)
        self.head = MLP(in_dim, num_classes, hidden, dropout=dropout, activation=activation)
        self.optim = dict(optim or {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4})
        self.normalize = normalize
        self.register_buffer("feature_mean", torch.zeros(in_dim))
        self.register_buffer("feature_std", torch.ones(in_dim))
        metrics = MetricCollection({"acc": MulticlassAccuracy(num_classes, average="micro")})
        self.train_metrics = metrics.clone(prefix=f"{self.kind}/train/")
        self.val_metrics = metrics.clone(prefix=f"{self.kind}/val/")

    def train(self, mode: bool = True) -> StageTwoClassifier:
        """Switch the head's mode; the backbone always stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def extraction_normalize(self) -> str:
        """The normalization applied when features are computed (standardization comes later)."""
        return "none" if self.normalize == "standardize" else self.normalize

    def features(
        self,
        images: torch.Tensor,
        *,
        penultimate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw features of ``images`` (before standardization); subclasses define them."""
        raise NotImplementedError

    def fit_standardizer(self, train_features: torch.Tensor) -> None:
        """Fit the per-feature mean/std used when ``normalize == "standardize"``."""
        if self.normalize != "standardize":
            return
        self.feature_mean.copy_(train_features.mean(0))
        self.feature_std.copy_(train_features.std(0).clamp_min(1e-8))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of ``H`` for raw features (standardized first when configured)."""
        if self.normalize == "standardize":
            features = (features - self.feature_mean) / self.feature_std
        return self.head(features)

    def classify_with_hidden(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, hidden)`` of ``H`` for raw features; ``hidden`` is the input of its last
        linear layer (eval-mode dropout is the identity)."""
        if self.normalize == "standardize":
            features = (features - self.feature_mean) / self.feature_std
        *body, last = self.head
        for layer in body:
            features = layer(features)
        return last(features), features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of the whole chain: backbone -> features -> ``H``."""
        return self.classify(self.features(images))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _idx: int) -> torch.Tensor:
        feats, labels = batch
        logits = self.classify(feats)
        loss = F.cross_entropy(logits, labels)
        self.train_metrics.update(logits, labels)
        self.log(f"{self.kind}/train/loss", loss, batch_size=len(labels))
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _idx: int) -> None:
        feats, labels = batch
        logits = self.classify(feats)
        self.val_metrics.update(logits, labels)
        self.log(
            f"{self.kind}/val/loss",
            F.cross_entropy(logits, labels),
            batch_size=len(labels),
            sync_dist=True,
        )
        self.log_dict(
            self.val_metrics, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(labels)
        )

    def configure_optimizers(self) -> Any:
        return build_optimizer(self.head.parameters(), self.optim, self.trainer)

    def head_state(self) -> dict[str, torch.Tensor]:
        """Everything stage 2 learned (the MLP and the standardizer), without the backbone."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def load_head_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what ``head_state`` returned."""
        missing, unexpected = self.load_state_dict(dict(state), strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise ValueError(
                f"stage-2 state does not fit this head: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}; was it saved with other stage2.* options?"
            )


class IntrospectiveClassifier(StageTwoClassifier):
    """``H`` on introspective gradient features ``r_x`` (METHOD.md §1)."""

    kind = "introspective"

    def __init__(self, backbone: nn.Module, *, feature_options: Mapping[str, Any], **kwargs: Any):
        options = dict(feature_options)
        super().__init__(backbone, normalize=options.pop("normalize", "l2"), **kwargs)
        self.feature_options = options

    def features(
        self, images: torch.Tensor, *, penultimate: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Gradient features of ``images`` (the backbone's head found by the registry)."""
        return self.features_with_outputs(images)[0]

    def features_with_outputs(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(raw features, penultimate activations, backbone logits)`` from one forward pass."""
        return extract_with_outputs(
            self.backbone,
            images,
            head=getattr(self.backbone, "head", None),
            normalize=self.extraction_normalize(),
            **self.feature_options,
        )


class ProbeClassifier(StageTwoClassifier):
    """The control: the same ``H`` and data recipe on the penultimate activations ``h``.

    Without it a gain of the introspective head cannot be attributed to the gradients rather
    than to a second classifier trained on the backbone's representation.
    """

    kind = "control"

    def features(
        self, images: torch.Tensor, *, penultimate: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Penultimate activations (L2-normalized per sample when ``normalize == "l2"``)."""
        if penultimate is None:
            with torch.no_grad():
                _, penultimate = self.backbone.forward_features(images)
        return normalize_features(penultimate, self.extraction_normalize())
