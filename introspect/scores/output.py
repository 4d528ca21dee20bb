"""Confidence scores that are functions of the logits alone (docs/guides/scores.md, baselines).

Every score maps logits ``(B, N)`` to a ``(B,)`` tensor on the same device and in the same dtype;
higher means more in-distribution / more trustworthy.
"""

from __future__ import annotations

import torch


def check_logits(logits: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``logits`` is a floating-point ``(B, N)`` tensor with N >= 2."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[1] < 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a (batch, num_classes >= 2) tensor, got {shape}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got dtype {logits.dtype}")


def msp(logits: torch.Tensor) -> torch.Tensor:
    """Maximum softmax probability (Hendrycks & Gimpel 2017)."""
    check_logits(logits)
    return torch.softmax(logits, dim=1).amax(dim=1)


def max_logit(logits: torch.Tensor) -> torch.Tensor:
    """Largest logit (Hendrycks et al. 2022)."""
    check_logits(logits)
    return logits.amax(dim=1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Negated Shannon entropy (nats) of ``softmax(logits)``: 0 for a one-hot prediction,
    ``-log N`` for a uniform one."""
    check_logits(logits)
    log_p = torch.log_softmax(logits, dim=1)
    return (log_p.exp() * log_p).sum(dim=1)


def margin(logits: torch.Tensor) -> torch.Tensor:
    """Softmax margin: top-1 minus top-2 softmax probability (not the logit margin), in
    ``[0, 1]``."""
    check_logits(logits)
    top2 = torch.softmax(logits, dim=1).topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def energy(logits: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """Negative free energy ``T * logsumexp(z / T)`` (Liu et al. 2020), temperature ``T > 0``."""
    check_logits(logits)
    if T <= 0:
        raise ValueError(f"temperature T must be positive, got {T}")
    return T * torch.logsumexp(logits / T, dim=1)


def nll(logits: torch.Tensor) -> torch.Tensor:
    """Log-probability of the predicted class, ``log max softmax(z)``: the negated NLL of the
    prediction (GradTrust's NLL baseline); a monotone function of ``msp``."""
    check_logits(logits)
    return torch.log_softmax(logits, dim=1).amax(dim=1)
