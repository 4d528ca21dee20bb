"""Trainable stages: the feed-forward classifier (stage 1), the stage-2 heads on introspective
features, on the penultimate activations (the control) and on those with the softmax output
(the control for the gradient's form), and their training utilities."""

from introspect.models.feedforward import FeedForwardClassifier
from introspect.models.optim import build_optimizer
from introspect.models.stage2 import (
    IntrospectiveClassifier,
    ProbeClassifier,
    ProbeWithOutputClassifier,
    StageTwoClassifier,
    freeze,
)

__all__ = [
    "FeedForwardClassifier",
    "IntrospectiveClassifier",
    "ProbeClassifier",
    "ProbeWithOutputClassifier",
    "StageTwoClassifier",
    "build_optimizer",
    "freeze",
]
