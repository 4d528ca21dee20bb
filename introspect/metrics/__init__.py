"""Calibration metrics, OOD-detection and trust metrics (torchmetrics, DDP-synchronized),
paired bootstrap intervals of differences, reliability diagrams and image-quality agreement
metrics (OR, RMSE, PLCC, SRCC, KRCC).

The names below are imported on first use, so that importing one torch-free submodule
(e.g. ``introspect.metrics.paired``) does not import torch."""

from __future__ import annotations

from introspect.lazy import lazy_exports

# Public name -> the submodule that defines it.
_EXPORTS: dict[str, str] = {
    "AdaptiveCalibrationError": "introspect.metrics.calibration",
    "BrierScore": "introspect.metrics.calibration",
    "ClassificationMetrics": "introspect.metrics.collection",
    "ExpectedCalibrationError": "introspect.metrics.calibration",
    "MaxCalibrationError": "introspect.metrics.calibration",
    "NegativeLogLikelihood": "introspect.metrics.calibration",
    "OODMetrics": "introspect.metrics.ood",
    "PairedDifference": "introspect.metrics.paired",
    "TrustMetrics": "introspect.metrics.ood",
    "area_under_trust_curve": "introspect.metrics.ood",
    "auac": "introspect.metrics.ood",
    "aufc": "introspect.metrics.ood",
    "aupr_in": "introspect.metrics.ood",
    "aupr_out": "introspect.metrics.ood",
    "auroc": "introspect.metrics.ood",
    "bins_from_sums": "introspect.metrics.reliability",
    "classification_metrics": "introspect.metrics.collection",
    "detection_error": "introspect.metrics.ood",
    "fit_temperature": "introspect.metrics.temperature",
    "fpr_at_tpr": "introspect.metrics.ood",
    "krcc": "introspect.metrics.quality",
    "logistic_mapping": "introspect.metrics.quality",
    "ood_metrics": "introspect.metrics.ood",
    "outlier_ratio": "introspect.metrics.quality",
    "paired_auroc_difference": "introspect.metrics.paired",
    "paired_ece_difference": "introspect.metrics.paired",
    "paired_ece_differences": "introspect.metrics.paired",
    "paired_mean_difference": "introspect.metrics.paired",
    "percentile_grid": "introspect.metrics.ood",
    "plcc": "introspect.metrics.quality",
    "reliability_bins": "introspect.metrics.reliability",
    "reliability_diagram": "introspect.metrics.reliability",
    "reliability_grid": "introspect.metrics.reliability",
    "rmse": "introspect.metrics.quality",
    "roc_curve": "introspect.metrics.ood",
    "srcc": "introspect.metrics.quality",
    "temper": "introspect.metrics.temperature",
    "temperature_nll": "introspect.metrics.temperature",
    "trust_curve": "introspect.metrics.ood",
    "validate_probs_target": "introspect.metrics.calibration",
    "verdict": "introspect.metrics.paired",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
