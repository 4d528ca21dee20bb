"""Post-hoc OOD detectors of the current literature in the one ``Detector`` protocol: ViM, KNN,
ReAct, ASH (-p, -b, -s), DICE, GEN, SHE, RMD (relative Mahalanobis), NNGuide and fDBD.

Every detector reads a ``FeatureSource``: the features ``z`` that enter a final linear layer
``logits = W z + b`` and that layer. ``Penultimate`` is the classifier's own (``z`` = the
penultimate activations ``h``, the layer = its head); ``IntrospectiveHidden`` is the trained
introspective head's (``z`` = the input of the last linear layer of ``H``, on ``r_x``), so each
detector has an introspective variant on the same math. Scores are confidences (higher = more
in-distribution). Detectors with statistics are fitted on ``(images, labels)`` batches of the
training distribution (rows with a label < 0 are ignored); all scoring is batched.
"""

from __future__ import annotations

from introspect.detect.posthoc_base import (
    FeatureSource,
    Fitted,
    IntrospectiveHidden,
    Penultimate,
    PosthocDetector,
)
from introspect.detect.posthoc_features import FDBD, KNN, RMD, SHE, NNGuide, ViM
from introspect.detect.posthoc_shaping import ASH, DICE, GEN, ReAct

__all__ = [
    "ASH", "DICE", "FDBD", "GEN", "KNN", "POSTHOC", "RMD", "SHE", "FeatureSource", "Fitted",
    "IntrospectiveHidden", "NNGuide", "Penultimate", "PosthocDetector", "ReAct", "ViM",
]  # fmt: skip

POSTHOC: dict[str, type[PosthocDetector]] = {
    "vim": ViM,
    "knn": KNN,
    "react": ReAct,
    "ash": ASH,
    "dice": DICE,
    "gen": GEN,
    "she": SHE,
    "rmd": RMD,
    "nnguide": NNGuide,
    "fdbd": FDBD,
}
