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

from introspect.gradients import extract_features
from introspect.gradients.factors import GradientFactors, factor_linear, feature_moments
from introspect.gradients.normalize import normalize_features
from introspect.models.bilinear import LowRankBilinear
from introspect.models.mlp import MLP
from introspect.models.optim import build_optimizer

# The stage-2 heads a run can train, in table order: on the introspective gradient features, on
# the penultimate activations h, and on h with the softmax output p.
KINDS = ("introspective", "control", "control_hp")

# Largest full first layer (features x first hidden width) of an introspective head; a larger
# one needs stage2.head.rank (ImageNet with ResNet-50: 2,048,000 x 256 = 524 M weights).
MAX_FULL_WEIGHTS = 50_000_000


def freeze(backbone: nn.Module) -> nn.Module:
    """Put ``backbone`` in eval mode with no parameter requiring grad; returns it."""
    backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone


class StageTwoClassifier(L.LightningModule):
    """Frozen backbone -> features -> MLP ``H``, trained with cross-entropy on the true labels.

    Training and validation batches are ``(features, labels)`` (features come from the cache:
    a ``(B, F)`` tensor or, for the introspective head, ``GradientFactors`` that the first layer
    consumes without building the ``B x F`` matrix); ``forward(images)`` runs the whole chain on
    images. ``normalize="standardize"`` uses a
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
        first_layer: nn.Module | None = None,
    ) -> None:
        """``first_layer`` replaces the MLP's first ``nn.Linear`` (e.g. a low-rank one)."""
        super().__init__()
        if normalize not in ("none", "l2", "standardize"):
            raise ValueError(f"normalize must be none, l2 or standardize, got {normalize!r}")
        self.backbone = freeze(backbone)
        self.head = MLP(
            in_dim, num_classes, hidden, dropout=dropout, activation=activation, first=first_layer
        )
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

    def fit_standardizer(self, train_features: torch.Tensor | GradientFactors) -> None:
        """Fit the per-feature mean/std used when ``normalize == "standardize"`` (from factors
        without materializing them)."""
        if self.normalize != "standardize":
            return
        if isinstance(train_features, GradientFactors):
            mean, std = feature_moments(train_features)
        else:
            mean, std = train_features.mean(0), train_features.std(0)
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp_min(1e-8))

    def classify(self, features: torch.Tensor | GradientFactors) -> torch.Tensor:
        """Logits of ``H`` for raw features or their factors (standardized first when
        configured; on factors the standardization is folded into the first layer)."""
        if isinstance(features, GradientFactors):
            out = self._first_layer(features)
            for layer in list(self.head)[1:]:
                out = layer(out)
            return out
        if self.normalize == "standardize":
            features = (features - self.feature_mean) / self.feature_std
        return self.head(features)

    def _first_layer(self, factors: GradientFactors) -> torch.Tensor:
        """The first layer of ``H`` on factors."""
        first = self.head[0]
        if isinstance(first, LowRankBilinear):
            return first(factors)
        assert isinstance(first, nn.Linear)
        if self.normalize == "standardize":
            return factor_linear(
                factors, first.weight, first.bias, mean=self.feature_mean, std=self.feature_std
            )
        return factor_linear(factors, first.weight, first.bias)

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
        self.validate_batch(*batch, logger=self)

    def validate_batch(
        self, feats: Any, labels: torch.Tensor, *, logger: L.LightningModule
    ) -> None:
        """Update the validation metrics on one batch and log them and the loss through
        ``logger``, the module attached to the trainer (this head, or a ``HeadPair`` holding it)."""
        logits = self.classify(feats)
        self.val_metrics.update(logits, labels)
        logger.log(
            f"{self.kind}/val/loss",
            F.cross_entropy(logits, labels),
            batch_size=len(labels),
            sync_dist=True,
        )
        logger.log_dict(
            self.val_metrics, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(labels)
        )

    def configure_optimizers(self) -> Any:
        return build_optimizer(self.head.parameters(), self.optim, self.trainer, fused=True)

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
    """``H`` on introspective gradient features ``r_x`` (docs/concepts.md)."""

    kind = "introspective"

    def __init__(
        self,
        backbone: nn.Module,
        *,
        feature_options: Mapping[str, Any],
        rank: int = 0,
        **kwargs: Any,
    ):
        """``rank > 0`` makes the first layer a ``LowRankBilinear`` of that rank on factors
        (the full linear layer otherwise)."""
        options = dict(feature_options)
        normalize = options.pop("normalize", "l2")
        first = None
        if rank:
            hidden = kwargs.get("hidden", (256, 128))
            width = hidden[0] if len(hidden) else kwargs["num_classes"]
            first = _low_rank_layer(backbone, options, normalize, rank, kwargs["in_dim"], width)
        super().__init__(backbone, normalize=normalize, first_layer=first, **kwargs)
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
        out = extract_features(
            self.backbone,
            images,
            head=getattr(self.backbone, "head", None),
            normalize=self.extraction_normalize(),
            **self.feature_options,
        )
        assert out.features is not None and out.h is not None
        return out.features, out.h, out.logits

    def inputs_with_outputs(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor | GradientFactors, torch.Tensor, torch.Tensor]:
        """``(head inputs, penultimate activations, backbone logits)`` from one forward pass:
        the head inputs are ``GradientFactors`` for last-layer recipes (what ``classify`` takes
        without materializing), else the raw features."""
        if self.feature_options.get("params") is not None:
            return self.features_with_outputs(images)
        out = extract_features(
            self.backbone,
            images,
            head=getattr(self.backbone, "head", None),
            normalize=self.extraction_normalize(),
            materialize=False,
            **self.feature_options,
        )
        assert out.factors is not None
        return out.factors, out.factors.h, out.logits


def _low_rank_layer(
    backbone: nn.Module,
    options: Mapping[str, Any],
    normalize: str,
    rank: int,
    in_dim: int,
    width: int,
) -> LowRankBilinear:
    """The rank-``rank`` first layer of an introspective head on ``backbone.head``'s factors."""
    if normalize == "standardize" or options.get("params") is not None:
        raise ValueError(
            "stage2.head.rank needs last-layer features normalized with l2 or none (a "
            "low-rank layer does not fold standardization); set stage2.head.rank=0"
        )
    classes, inputs = backbone.head.weight.shape
    blocks = classes if options.get("per_class") else 1
    include_bias = bool(options.get("include_bias"))
    expected = blocks * classes * (inputs + (1 if include_bias else 0))
    if expected != in_dim:
        raise ValueError(f"the head takes {in_dim} features, the factors stand for {expected}")
    return LowRankBilinear(blocks, classes, inputs, width, rank, include_bias=include_bias)


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
        return normalize_features(
            self.penultimate(images, penultimate), self.extraction_normalize()
        )

    def penultimate(self, images: torch.Tensor, given: torch.Tensor | None) -> torch.Tensor:
        """``given`` if not ``None``, else the backbone's penultimate activations of ``images``."""
        if given is not None:
            return given
        with torch.no_grad():
            return self.backbone.forward_features(images)[1]


def features_and_output(h: torch.Tensor, head: nn.Linear, normalize: str) -> torch.Tensor:
    """``[n(h), softmax(head(h))]`` per row: the penultimate activations ``h`` normalized as the
    control normalizes them (``normalize``: ``"l2"`` divides each row by its L2 norm, ``"none"``
    leaves it), followed by the network's own softmax output ``p`` on them (never normalized),
    ``D + N`` values per image."""
    with torch.no_grad():
        p = head(h.to(head.weight.device, head.weight.dtype)).softmax(-1)
    return torch.cat([normalize_features(h, normalize), p.to(h.device, h.dtype)], dim=1)


class ProbeWithOutputClassifier(ProbeClassifier):
    """The control for the gradient's form: the same ``H`` and data recipe on ``[h, p]``, the
    penultimate activations (normalized as the control's) concatenated with the backbone's
    softmax output.

    The introspective feature ``r_x = s·(N·p − 1)·hᵀ`` is a fixed function of ``h`` and ``p``;
    a head on ``[h, p]`` sees the same information without the rank-one gradient form, so a gain
    of the introspective head over this one is due to the form, not to what it is built from.
    With ``normalize == "standardize"`` the whole ``[h, p]`` row is standardized.
    """

    kind = "control_hp"

    def features(
        self, images: torch.Tensor, *, penultimate: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``features_and_output`` of ``images``' penultimate activations."""
        h = self.penultimate(images, penultimate)
        return features_and_output(h, self.backbone.head, self.extraction_normalize())
