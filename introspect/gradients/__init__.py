"""Introspective gradient features: last-layer closed form (classifiers and quality regressors),
general per-sample gradients."""

from introspect.gradients.extract import (
    FeatureSpec,
    extract,
    extract_factors,
    extract_factors_with_outputs,
    extract_with_outputs,
    feature_dim,
)
from introspect.gradients.factors import GradientFactors, factor_linear
from introspect.gradients.general import per_sample_grads
from introspect.gradients.normalize import Standardizer
from introspect.gradients.regression import extract_regression, extract_regression_with_outputs

__all__ = [
    "FeatureSpec",
    "GradientFactors",
    "Standardizer",
    "extract",
    "extract_factors",
    "extract_factors_with_outputs",
    "extract_regression",
    "extract_regression_with_outputs",
    "extract_with_outputs",
    "factor_linear",
    "feature_dim",
    "per_sample_grads",
]
