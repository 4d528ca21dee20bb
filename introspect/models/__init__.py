"""Trainable stages: the feed-forward classifier (stage 1), the stage-2 heads on introspective
features and on the penultimate activations (the control), and their training utilities."""

from introspect.models.feedforward import FeedForwardClassifier
from introspect.models.optim import build_optimizer
from introspect.models.stage2 import (
    IntrospectiveClassifier,
    ProbeClassifier,
    StageTwoClassifier,
    freeze,
)

__all__ = [
    "FeedForwardClassifier",
    "IntrospectiveClassifier",
    "ProbeClassifier",
    "StageTwoClassifier",
    "build_optimizer",
    "freeze",
]
