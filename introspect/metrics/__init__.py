"""Calibration metrics, OOD-detection and trust metrics (torchmetrics, DDP-synchronized),
paired bootstrap intervals of differences, reliability diagrams, image-quality agreement
metrics (OR, RMSE, PLCC, SRCC, KRCC), selective classification (risk–coverage, AURC, AUGRC),
split-conformal prediction sets, calibrators beyond temperature scaling and the conformal and
selective table of the introspective head.

The names below are imported on first use, so that importing one torch-free submodule
(e.g. ``introspect.metrics.paired``) does not import torch."""

from __future__ import annotations

from introspect.lazy import lazy_exports

# Public name -> the submodule that defines it.
_EXPORTS: dict[str, str] = {
    "AdaptiveCalibrationError": "introspect.metrics.calibration",
    "BrierScore": "introspect.metrics.calibration",
    "ClassificationMetrics": "introspect.metrics.collection",
    "DirichletCalibration": "introspect.metrics.calibrators",
    "ExpectedCalibrationError": "introspect.metrics.calibration",
    "IsotonicOneVsRest": "introspect.metrics.calibrators",
    "MatrixScaling": "introspect.metrics.calibrators",
    "MaxCalibrationError": "introspect.metrics.calibration",
    "NegativeLogLikelihood": "introspect.metrics.calibration",
    "OODMetrics": "introspect.metrics.ood",
    "PairedDifference": "introspect.metrics.paired",
    "QuestionDifference": "introspect.metrics.questions",
    "QuestionRow": "introspect.metrics.questions",
    "QuestionTable": "introspect.metrics.questions",
    "RiskCoverage": "introspect.metrics.selective",
    "RunLogits": "introspect.metrics.questions",
    "SplitConformal": "introspect.metrics.conformal",
    "TrustMetrics": "introspect.metrics.ood",
    "VectorScaling": "introspect.metrics.calibrators",
    "adaptive_ece": "introspect.metrics.calibrators",
    "area_under_trust_curve": "introspect.metrics.ood",
    "auac": "introspect.metrics.ood",
    "aufc": "introspect.metrics.ood",
    "augrc": "introspect.metrics.selective",
    "aupr_in": "introspect.metrics.ood",
    "aupr_out": "introspect.metrics.ood",
    "aurc": "introspect.metrics.selective",
    "auroc": "introspect.metrics.ood",
    "bins_from_sums": "introspect.metrics.reliability",
    "classification_metrics": "introspect.metrics.collection",
    "classwise_ece": "introspect.metrics.calibrators",
    "conformal_quantile": "introspect.metrics.conformal",
    "conformal_scores": "introspect.metrics.conformal",
    "conformal_selective_table": "introspect.metrics.questions",
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
    "risk_coverage_curve": "introspect.metrics.selective",
    "risk_coverage_figure": "introspect.metrics.selective",
    "rmse": "introspect.metrics.quality",
    "roc_curve": "introspect.metrics.ood",
    "selective_risk": "introspect.metrics.selective",
    "set_coverage": "introspect.metrics.conformal",
    "set_size": "introspect.metrics.conformal",
    "srcc": "introspect.metrics.quality",
    "temper": "introspect.metrics.temperature",
    "temperature_nll": "introspect.metrics.temperature",
    "trust_curve": "introspect.metrics.ood",
    "validate_probs_target": "introspect.metrics.calibration",
    "verdict": "introspect.metrics.paired",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
