"""Uncertainty of a set of sampled predictive distributions ``probs`` of shape ``(S, B, N)``
(S samples, e.g. MC-dropout passes or ensemble members; B inputs; N classes), in nats.

- predictive entropy ``H(mean_s p_s)``: total uncertainty,
- expected entropy ``mean_s H(p_s)``: the aleatoric part,
- mutual information (BALD, Houlsby et al. 2011) = predictive − expected entropy: the epistemic
  part, the disagreement between samples (0 when all samples agree).
"""

from __future__ import annotations

import torch


def _check(probs: torch.Tensor) -> None:
    if not isinstance(probs, torch.Tensor) or probs.ndim != 3 or probs.shape[0] < 1:
        shape = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
        raise ValueError(f"probs must have shape (samples >= 1, batch, classes), got {shape}")
    if not probs.is_floating_point():
        raise ValueError(f"probs must be floating point, got dtype {probs.dtype}")


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(p, p).sum(-1)


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    """``(B,)`` entropy of the mean of the ``S`` sampled distributions."""
    _check(probs)
    return _entropy(probs.mean(0))


def expected_entropy(probs: torch.Tensor) -> torch.Tensor:
    """``(B,)`` mean over the ``S`` samples of each sample's entropy."""
    _check(probs)
    return _entropy(probs).mean(0)


def mutual_information(probs: torch.Tensor) -> torch.Tensor:
    """``(B,)`` BALD: predictive minus expected entropy (clamped at 0 against rounding)."""
    _check(probs)
    return (_entropy(probs.mean(0)) - _entropy(probs).mean(0)).clamp_min(0)
