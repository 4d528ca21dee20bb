"""Introspective gradient features: last-layer closed form, general per-sample gradients."""

from introspect.gradients.extract import FeatureSpec, extract, extract_with_outputs, feature_dim
from introspect.gradients.general import per_sample_grads
from introspect.gradients.normalize import Standardizer

__all__ = [
    "FeatureSpec",
    "Standardizer",
    "extract",
    "extract_with_outputs",
    "feature_dim",
    "per_sample_grads",
]
