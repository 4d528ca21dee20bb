"""Pool-based active learning: acquisition functions, the label-gated pool and the round loop."""

from introspect.active.heuristics import (
    STRATEGIES,
    acquire,
    badge_factors,
    bald,
    entropy,
    kmeans_pp,
    least_confidence,
    margin,
)
from introspect.active.pool import LabelPool, shard_indices

__all__ = [
    "STRATEGIES",
    "LabelPool",
    "acquire",
    "badge_factors",
    "bald",
    "entropy",
    "kmeans_pp",
    "least_confidence",
    "margin",
    "shard_indices",
]
