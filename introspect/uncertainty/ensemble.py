"""Deep ensembles (Lakshminarayanan et al. 2017): the prediction is the mean of the members'
softmax distributions."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def ensemble_probs(member_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(B, N)`` mean of ``softmax(logits)`` over the members' ``(B, N)`` logits."""
    if len(member_logits) == 0:
        raise ValueError("an ensemble needs at least one member's logits, got none")
    shapes = {tuple(z.shape) for z in member_logits}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(
            f"every member's logits must have one (batch, classes) shape, got {shapes}"
        )
    return torch.stack([z.softmax(-1) for z in member_logits]).mean(0)
