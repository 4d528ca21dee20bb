"""Confidence scores for OOD detection and prediction trust (docs/guides/scores.md).

Every score is a confidence: higher = more in-distribution / more trustworthy; batched,
``(B,)`` tensors on the device of the inputs.
"""

from introspect.scores.gradient import (
    PurviewDetector,
    gradnorm,
    gradtrust,
    purview_features,
    purview_last_layer,
    purview_score,
)
from introspect.scores.introspective import (
    introspective_features,
    introspective_msp,
    introspective_odin,
)
from introspect.scores.model_based import (
    Mahalanobis,
    logits_and_penultimate,
    odin,
    perturb_towards,
)
from introspect.scores.output import energy, entropy, margin, max_logit, msp
from introspect.scores.tables import (
    format_ood_table,
    format_trust_table,
    ood_table,
    score_batch,
    trust_table,
)

__all__ = [
    "Mahalanobis",
    "PurviewDetector",
    "energy",
    "entropy",
    "format_ood_table",
    "format_trust_table",
    "gradnorm",
    "gradtrust",
    "introspective_features",
    "introspective_msp",
    "introspective_odin",
    "logits_and_penultimate",
    "margin",
    "max_logit",
    "msp",
    "odin",
    "ood_table",
    "perturb_towards",
    "purview_features",
    "purview_last_layer",
    "purview_score",
    "score_batch",
    "trust_table",
]
