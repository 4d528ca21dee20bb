"""Calibration metrics (torchmetrics, DDP-synchronized) and reliability diagrams."""

from introspect.metrics.calibration import (
    AdaptiveCalibrationError,
    BrierScore,
    ExpectedCalibrationError,
    MaxCalibrationError,
    NegativeLogLikelihood,
    validate_probs_target,
)
from introspect.metrics.collection import ClassificationMetrics, classification_metrics
from introspect.metrics.reliability import reliability_bins, reliability_diagram, reliability_grid

__all__ = [
    "AdaptiveCalibrationError",
    "BrierScore",
    "ClassificationMetrics",
    "ExpectedCalibrationError",
    "MaxCalibrationError",
    "NegativeLogLikelihood",
    "classification_metrics",
    "reliability_bins",
    "reliability_diagram",
    "reliability_grid",
    "validate_probs_target",
]
