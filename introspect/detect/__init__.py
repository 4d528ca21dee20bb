"""Detectors of challenging inputs (adversarial, corrupted, out-of-distribution): LID (Ma et al.
2018), Mahalanobis over layers (Lee et al. 2018), the protocol that fits supervised detectors on
one half of a set and reports them on the other half, and the one ``Detector`` protocol (with
its registry ``create_detector``) over every score of ``scores``, ``detect`` and
``uncertainty``."""

from introspect.detect.detectors import (
    DETECTORS,
    Detector,
    create_detector,
    images_of,
    list_detectors,
)
from introspect.detect.features import default_layers, layer_features
from introspect.detect.lid import lid_features, lid_mle
from introspect.detect.logistic import LogisticDetector
from introspect.detect.mahalanobis import LayerMahalanobis
from introspect.detect.protocol import Halves, halves, held_out_metrics

__all__ = [
    "DETECTORS",
    "Detector",
    "Halves",
    "LayerMahalanobis",
    "LogisticDetector",
    "create_detector",
    "default_layers",
    "halves",
    "held_out_metrics",
    "images_of",
    "layer_features",
    "lid_features",
    "lid_mle",
    "list_detectors",
]
