"""introspect: two-stage introspective learning and gradient-based inference.

The public API, imported on first use (``import introspect`` itself loads no torch):

- ``Introspector(model, layer=None)``: introspective features of any trained classifier
  (``features(images, materialize=..., normalize=...) -> IntrospectiveFeatures``);
  ``extract_features`` / ``extract`` are the functional forms, ``GradientFactors`` the rank-one
  factors;
- ``IntrospectiveClassifier`` / ``ProbeClassifier``: the stage-2 heads (LightningModules) on
  the introspective features and on the penultimate activations (the control);
  ``FeedForwardClassifier`` is the stage-1 classifier;
- ``fit_heads(backbone, train_loader, val_loader, ...) -> FittedHeads``: extracts the
  features, trains the introspective and control heads and fits the temperatures (the command
  line's stage 2 is this call; ``HeadRecipe`` / ``FeatureOptions`` are its options);
  ``evaluate(fitted, {split: loader}) -> EvaluationResult``: accuracy, ECE, NLL of FF / INT /
  CTL and their +TS twins per split or corruption cell, printing as the run's table;
- ``create_detector(name, model, ...)``: every confidence score and detector behind one
  ``Detector`` protocol (``fit(loader)``, ``score(batch)``, higher = more in-distribution);
- ``create_explainer(name, model, layer=...)``: every map method behind one ``Explainer``
  protocol (``attribute(inputs, target=...)``).

The subpackages (``introspect.gradients``, ``introspect.scores``, ...) list their own public
names in ``__all__``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module defining it, imported on first access (PEP 562).
_EXPORTS = {
    "Detector": "introspect.detect.detectors",
    "EvaluationResult": "introspect.stages.evaluation",
    "FeatureOptions": "introspect.stages.options",
    "FittedHeads": "introspect.stages.heads",
    "HeadRecipe": "introspect.stages.options",
    "evaluate": "introspect.stages.evaluation",
    "fit_heads": "introspect.stages.heads",
    "Explainer": "introspect.explain.explainers",
    "FeedForwardClassifier": "introspect.models.feedforward",
    "GradientFactors": "introspect.gradients.factors",
    "IntrospectiveClassifier": "introspect.models.stage2",
    "IntrospectiveFeatures": "introspect.gradients.extract",
    "Introspector": "introspect.gradients.introspector",
    "ProbeClassifier": "introspect.models.stage2",
    "create_detector": "introspect.detect.detectors",
    "create_explainer": "introspect.explain.explainers",
    "extract": "introspect.gradients.extract",
    "extract_features": "introspect.gradients.extract",
    "list_detectors": "introspect.detect.detectors",
    "list_explainers": "introspect.explain.explainers",
}

_SUBPACKAGES = frozenset(
    {
        "active", "attacks", "backbones", "cli", "config", "corruptions", "data", "detect",
        "explain", "gradients", "jobs", "metrics", "models", "quality", "report", "runs",
        "scores", "stages", "uncertainty",
    }
)  # fmt: skip

if TYPE_CHECKING:
    from introspect.detect.detectors import Detector, create_detector, list_detectors
    from introspect.explain.explainers import Explainer, create_explainer, list_explainers
    from introspect.gradients.extract import IntrospectiveFeatures, extract, extract_features
    from introspect.gradients.factors import GradientFactors
    from introspect.gradients.introspector import Introspector
    from introspect.models.feedforward import FeedForwardClassifier
    from introspect.models.stage2 import IntrospectiveClassifier, ProbeClassifier
    from introspect.stages.evaluation import EvaluationResult, evaluate
    from introspect.stages.heads import FittedHeads, fit_heads
    from introspect.stages.options import FeatureOptions, HeadRecipe


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
    elif name in _SUBPACKAGES:
        value = import_module(f"introspect.{name}")
    else:
        raise AttributeError(f"module 'introspect' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | _SUBPACKAGES)


__all__ = [
    "Detector",
    "EvaluationResult",
    "Explainer",
    "FeatureOptions",
    "FeedForwardClassifier",
    "FittedHeads",
    "GradientFactors",
    "HeadRecipe",
    "IntrospectiveClassifier",
    "IntrospectiveFeatures",
    "Introspector",
    "ProbeClassifier",
    "__version__",
    "create_detector",
    "create_explainer",
    "evaluate",
    "extract",
    "extract_features",
    "fit_heads",
    "list_detectors",
    "list_explainers",
]
