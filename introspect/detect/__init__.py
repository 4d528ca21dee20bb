"""Detectors of challenging inputs (adversarial, corrupted, out-of-distribution) built on layer
features: LID (Ma et al. 2018), Mahalanobis over layers (Lee et al. 2018) and the protocol that
fits supervised detectors on one half of a set and reports them on the other half."""

from introspect.detect.features import default_layers, layer_features
from introspect.detect.lid import lid_features, lid_mle
from introspect.detect.logistic import LogisticDetector
from introspect.detect.mahalanobis import LayerMahalanobis
from introspect.detect.protocol import Halves, halves, held_out_metrics

__all__ = [
    "Halves",
    "LayerMahalanobis",
    "LogisticDetector",
    "default_layers",
    "halves",
    "held_out_metrics",
    "layer_features",
    "lid_features",
    "lid_mle",
]
