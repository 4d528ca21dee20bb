"""Uncertainty of a set of sampled predictive distributions ``probs`` of shape ``(S, B, N)``
(S samples, e.g. MC-dropout passes or ensemble members; B inputs; N classes), in nats.

- predictive entropy ``H(mean_s p_s)``: total uncertainty,
- expected entropy ``mean_s H(p_s)``: the aleatoric part,
- mutual information (BALD, Houlsby et al. 2011) = predictive − expected entropy: the epistemic
  part, the disagreement between samples (0 when all samples agree).
"""

from __future__ import annotations

import torch


def check_float_tensor(value: object, name: str, shape: str, min_sizes: tuple[int, ...]) -> None:
    """``ValueError`` unless ``value`` is a floating-point tensor with one dimension per entry
    of ``min_sizes``, each at least that long (``shape`` describes them in the message)."""
    if (
        not isinstance(value, torch.Tensor)
        or value.ndim != len(min_sizes)
        or any(n < least for n, least in zip(value.shape, min_sizes, strict=True))
    ):
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must have shape {shape}, got {got}")
    if not value.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {value.dtype}")


def _check(probs: torch.Tensor) -> None:
    check_float_tensor(probs, "probs", "(samples >= 1, batch, classes)", (1, 0, 0))


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
