"""Sanity checks of explanation maps: do they depend on the model's learned weights
(model-parameter randomization) and not on input changes that should not matter
(max-sensitivity)?"""

from introspect.sanity.randomization import (
    Randomization,
    model_randomization,
    randomizable_layers,
    spearman,
    ssim,
)
from introspect.sanity.robustness import max_sensitivity, uniform_noise
from introspect.sanity.table import evaluate_sanity, format_sanity, sanity_section

__all__ = [
    "Randomization",
    "evaluate_sanity",
    "format_sanity",
    "max_sensitivity",
    "model_randomization",
    "randomizable_layers",
    "sanity_section",
    "spearman",
    "ssim",
    "uniform_noise",
]
