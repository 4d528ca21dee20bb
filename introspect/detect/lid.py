"""Local intrinsic dimensionality (Ma et al., ICLR 2018) of layer activations."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from introspect.detect.features import layer_features


def lid_mle(
    queries: torch.Tensor, reference: torch.Tensor, k: int, *, exclude_self: bool = False
) -> torch.Tensor:
    """Maximum-likelihood LID estimate of every query ``(Q, D)`` from its ``k`` nearest
    neighbours in ``reference`` ``(R, D)`` (Euclidean):
    ``-(1/k sum_i log(r_i / r_k))^-1``; ``(Q,)`` float64.

    ``exclude_self`` drops each query's nearest neighbour (the query itself, when the queries
    are the reference).
    """
    skip = 1 if exclude_self else 0
    if not 1 <= k <= reference.shape[0] - skip:
        raise ValueError(f"k={k} must lie in 1..{reference.shape[0] - skip} (reference size)")
    d = torch.cdist(queries.double(), reference.double())
    r = d.topk(k + skip, dim=1, largest=False).values[:, skip:]
    r = r.clamp_min(1e-12)
    return -1.0 / (r / r[:, -1:]).log().mean(1).clamp_max(-1e-12)


def lid_features(
    model: nn.Module,
    images: torch.Tensor,
    reference: Sequence[torch.Tensor],
    layers: Sequence[str],
    k: int,
) -> torch.Tensor:
    """``(B, L)`` LID of ``images`` at every layer (flattened activations), against the
    ``reference`` activations of the same layers (``(R, D_l)`` each, clean images)."""
    with torch.inference_mode(False), torch.no_grad():
        _, acts = layer_features(model, images, layers)
    columns = [
        lid_mle(a.flatten(1), ref.to(a.device), k) for a, ref in zip(acts, reference, strict=True)
    ]
    return torch.stack(columns, dim=1)
