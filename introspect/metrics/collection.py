"""The standard set of classification metrics, one collection per split."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from introspect.metrics.calibration import (
    AdaptiveCalibrationError,
    BrierScore,
    ExpectedCalibrationError,
    MaxCalibrationError,
    NegativeLogLikelihood,
    validate_probs_target,
)


class ClassificationMetrics(MetricCollection):
    """A ``MetricCollection`` that validates ``(probs, target)`` once per batch for all members."""

    def __init__(self, metrics: dict, *, num_classes: int, prefix: str | None = None) -> None:
        super().__init__(metrics, prefix=prefix)
        self.num_classes = num_classes

    def forward(self, probs: torch.Tensor, target: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
        """Validate, then update every member and return its value on this batch."""
        validate_probs_target(probs, target, self.num_classes)
        return super().forward(probs, target, **kwargs)

    def update(self, probs: torch.Tensor, target: torch.Tensor, **kwargs: Any) -> None:
        """Validate, then add the batch to every member."""
        validate_probs_target(probs, target, self.num_classes)
        super().update(probs, target, **kwargs)


def classification_metrics(
    num_classes: int, *, n_bins: int = 15, prefix: str = ""
) -> MetricCollection:
    """``acc``, ``ece``, ``aece``, ``mce``, ``nll`` and ``brier`` over ``(B, N)`` probabilities.

    Update with ``(probs, target)``: probabilities (softmax of the logits), not logits; inputs are
    checked once per batch by the collection. ``acc`` is micro-averaged top-1 accuracy. Keys carry
    ``prefix``; make one collection per split with ``collection.clone(prefix="val/")``.
    """
    members = {"num_classes": num_classes, "validate_args": False}
    metrics = {
        "acc": MulticlassAccuracy(average="micro", **members),
        "ece": ExpectedCalibrationError(n_bins, **members),
        "aece": AdaptiveCalibrationError(n_bins, **members),
        "mce": MaxCalibrationError(n_bins, **members),
        "nll": NegativeLogLikelihood(**members),
        "brier": BrierScore(**members),
    }
    return ClassificationMetrics(metrics, num_classes=num_classes, prefix=prefix or None)
