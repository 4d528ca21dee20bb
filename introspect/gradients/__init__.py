"""Introspective gradient features: last-layer closed form (classifiers and quality regressors),
general per-sample gradients, and the ``Introspector`` of any trained classifier."""

from introspect.gradients.extract import (
    FeatureSpec,
    IntrospectiveFeatures,
    extract,
    extract_features,
    feature_dim,
)
from introspect.gradients.factors import GradientFactors, factor_linear
from introspect.gradients.general import per_sample_grads
from introspect.gradients.introspector import Introspector
from introspect.gradients.normalize import Standardizer
from introspect.gradients.regression import extract_regression, extract_regression_with_outputs

__all__ = [
    "FeatureSpec",
    "GradientFactors",
    "IntrospectiveFeatures",
    "Introspector",
    "Standardizer",
    "extract",
    "extract_features",
    "extract_regression",
    "extract_regression_with_outputs",
    "factor_linear",
    "feature_dim",
    "per_sample_grads",
]
