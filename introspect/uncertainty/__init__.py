"""Uncertainty baselines beside introspection: MC dropout at the head input, deep ensembles,
and the entropy-based measures of sampled predictions (BALD, expected entropy)."""

from introspect.uncertainty.ensemble import ensemble_probs
from introspect.uncertainty.mc_dropout import MCDropout, dropout_layers
from introspect.uncertainty.measures import (
    expected_entropy,
    mutual_information,
    predictive_entropy,
)

__all__ = [
    "MCDropout",
    "dropout_layers",
    "ensemble_probs",
    "expected_entropy",
    "mutual_information",
    "predictive_entropy",
]
