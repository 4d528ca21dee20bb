"""Confidence scores that are functions of the logits alone (docs/guides/scores.md, baselines).

Every score maps logits ``(B, N)`` to a ``(B,)`` tensor on the same device and in the same dtype;
higher means more in-distribution / more trustworthy.
"""

from __future__ import annotations

import torch

from introspect.uncertainty.measures import check_float_tensor


def check_logits(logits: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``logits`` is a floating-point ``(B, N)`` tensor with N >= 2."""
    check_float_tensor(logits, "logits", "(batch, num_classes >= 2)", (0, 2))


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
