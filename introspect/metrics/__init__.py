"""Calibration metrics, OOD-detection and trust metrics (torchmetrics, DDP-synchronized) and
reliability diagrams."""

from introspect.metrics.calibration import (
    AdaptiveCalibrationError,
    BrierScore,
    ExpectedCalibrationError,
    MaxCalibrationError,
    NegativeLogLikelihood,
    validate_probs_target,
)
from introspect.metrics.collection import ClassificationMetrics, classification_metrics
from introspect.metrics.ood import (
    OODMetrics,
    TrustMetrics,
    area_under_trust_curve,
    auac,
    aufc,
    aupr_in,
    aupr_out,
    auroc,
    detection_error,
    fpr_at_tpr,
    ood_metrics,
    percentile_grid,
    roc_curve,
    trust_curve,
)
from introspect.metrics.reliability import (
    bins_from_sums,
    reliability_bins,
    reliability_diagram,
    reliability_grid,
)
from introspect.metrics.temperature import fit_temperature, temper, temperature_nll

__all__ = [
    "AdaptiveCalibrationError",
    "BrierScore",
    "ClassificationMetrics",
    "ExpectedCalibrationError",
    "MaxCalibrationError",
    "NegativeLogLikelihood",
    "OODMetrics",
    "TrustMetrics",
    "area_under_trust_curve",
    "auac",
    "aufc",
    "aupr_in",
    "aupr_out",
    "auroc",
    "bins_from_sums",
    "classification_metrics",
    "detection_error",
    "fit_temperature",
    "fpr_at_tpr",
    "ood_metrics",
    "percentile_grid",
    "roc_curve",
    "temper",
    "temperature_nll",
    "trust_curve",
    "reliability_bins",
    "reliability_diagram",
    "reliability_grid",
    "validate_probs_target",
]
