"""Calibration metrics, OOD-detection and trust metrics (torchmetrics, DDP-synchronized),
paired bootstrap intervals of differences, reliability diagrams and image-quality agreement
metrics (OR, RMSE, PLCC, SRCC, KRCC)."""

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
from introspect.metrics.paired import (
    PairedDifference,
    paired_auroc_difference,
    paired_mean_difference,
    verdict,
)
from introspect.metrics.quality import (
    krcc,
    logistic_mapping,
    outlier_ratio,
    plcc,
    rmse,
    srcc,
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
    "PairedDifference",
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
    "krcc",
    "logistic_mapping",
    "ood_metrics",
    "outlier_ratio",
    "paired_auroc_difference",
    "paired_mean_difference",
    "plcc",
    "percentile_grid",
    "rmse",
    "roc_curve",
    "srcc",
    "temper",
    "temperature_nll",
    "trust_curve",
    "reliability_bins",
    "reliability_diagram",
    "reliability_grid",
    "validate_probs_target",
    "verdict",
]
