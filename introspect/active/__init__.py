"""Pool-based active learning: acquisition functions, the label-gated pool and the round loop."""

from introspect.active.batchbald import BatchBALD, batchbald
from introspect.active.heuristics import (
    MC_STRATEGIES,
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
    "MC_STRATEGIES",
    "STRATEGIES",
    "BatchBALD",
    "batchbald",
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
