"""Trainable stages: the feed-forward classifier (stage 1) and its training utilities."""

from introspect.models.feedforward import FeedForwardClassifier
from introspect.models.optim import build_optimizer

__all__ = ["FeedForwardClassifier", "build_optimizer"]
