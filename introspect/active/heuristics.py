"""Acquisition functions on predicted distributions; a higher score means more informative.

Each takes the outputs of whichever classifier drives the acquisition (the feed-forward network
or the introspective head), so the same function serves both sources:

- ``entropy``: ``-Σ p log p``;
- ``least_confidence``: ``1 - max p``;
- ``margin``: ``-(p₍₁₎ - p₍₂₎)``, the negated gap between the two largest probabilities;
- ``bald``: mutual information of ``S`` MC-dropout samples (predictive minus expected entropy);
- ``batchbald``: the greedy batch of largest joint mutual information of the MC-dropout
  samples (``active.batchbald``);
- ``badge``: k-means++ seeding on the gradient embeddings at the predicted label,
  ``(p - e_ŷ) hᵀ`` with ``h`` the input of the classifier's last linear layer (the closed form
  of ``gradients.extract`` with a one-hot target), kept factorized as ``(g, h)``;
- ``random``: a seeded uniform draw.
"""

from __future__ import annotations

import torch

from introspect.active.batchbald import batchbald
from introspect.gradients.extract import logit_gradients
from introspect.uncertainty.measures import mutual_information

STRATEGIES: tuple[str, ...] = (
    "random", "entropy", "least_confidence", "margin", "bald", "badge", "batchbald",
)  # fmt: skip
# The strategies that score MC-dropout samples of the acquiring classifier.
MC_STRATEGIES: tuple[str, ...] = ("bald", "batchbald")


def _check_probs(probs: torch.Tensor) -> None:
    if not isinstance(probs, torch.Tensor) or probs.ndim != 2 or probs.shape[1] < 2:
        shape = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
        raise ValueError(f"probs must have shape (batch, classes >= 2), got {shape}")


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """``(B,)`` Shannon entropy (nats) of each row of ``probs`` ``(B, N)``."""
    _check_probs(probs)
    return -torch.special.xlogy(probs, probs).sum(-1)


def least_confidence(probs: torch.Tensor) -> torch.Tensor:
    """``(B,)`` one minus the largest probability of each row."""
    _check_probs(probs)
    return 1.0 - probs.max(-1).values


def margin(probs: torch.Tensor) -> torch.Tensor:
    """``(B,)`` minus the gap between the largest and the second-largest probability."""
    _check_probs(probs)
    top = probs.topk(2, dim=-1).values
    return top[:, 1] - top[:, 0]


def bald(samples: torch.Tensor) -> torch.Tensor:
    """``(B,)`` mutual information of ``samples`` ``(S, B, N)`` (MC-dropout probabilities)."""
    return mutual_information(samples)


def badge_factors(logits: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g, h)`` with ``g = softmax(z) - e_ŷ`` ``(B, N)``: BADGE's embedding is ``vec(g hᵀ)``.

    ``h`` ``(B, D)`` is the input of the last linear layer that produced ``logits`` ``(B, N)``;
    ``g`` is the cross-entropy gradient at the logits for the predicted label ``ŷ``.
    """
    predicted = logits.argmax(-1)
    g = logit_gradients(logits, loss="ce", target=predicted, per_class=False)[:, 0]
    return g, h.flatten(1).to(g.dtype)


def _squared_distances(
    g: torch.Tensor, h: torch.Tensor, gg: torch.Tensor, hh: torch.Tensor, j: int
) -> torch.Tensor:
    """``‖g_i h_iᵀ - g_j h_jᵀ‖²_F`` for every ``i``, from the factors (no ``N·D`` vectors)."""
    cross = (g @ g[j]) * (h @ h[j])
    return (gg * hh + gg[j] * hh[j] - 2.0 * cross).clamp_min(0.0)


def kmeans_pp(
    g: torch.Tensor, h: torch.Tensor, k: int, *, generator: torch.Generator
) -> torch.Tensor:
    """Indices of ``k`` k-means++ seeds among the embeddings ``vec(g_i h_iᵀ)``.

    As in BADGE, the first seed is the embedding of largest norm (lowest index on ties); each
    next one is drawn with probability proportional to its squared distance to the nearest seed
    (uniformly among the unchosen when all those distances are zero). Distances are computed in
    float64 from the factors. Deterministic for a given ``generator`` state.
    """
    n = g.shape[0]
    if not 0 <= k <= n:
        raise ValueError(f"cannot seed k={k} centres among {n} embeddings")
    if k == 0:
        return torch.zeros(0, dtype=torch.long)
    g, h = g.detach().double().cpu(), h.detach().double().cpu()
    gg, hh = (g * g).sum(1), (h * h).sum(1)
    first = int(torch.argmax(gg * hh))
    chosen = [first]
    taken = torch.zeros(n, dtype=torch.bool)
    taken[first] = True
    nearest = _squared_distances(g, h, gg, hh, first)
    while len(chosen) < k:
        weights = torch.where(taken, torch.zeros_like(nearest), nearest)
        if weights.sum() <= 0:
            weights = (~taken).double()
        nxt = int(torch.multinomial(weights, 1, generator=generator))
        chosen.append(nxt)
        taken[nxt] = True
        nearest = torch.minimum(nearest, _squared_distances(g, h, gg, hh, nxt))
    return torch.tensor(chosen, dtype=torch.long)


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest ``scores``, highest first; ties go to the lower index."""
    if not 0 <= k <= scores.numel():
        raise ValueError(f"cannot pick k={k} of {scores.numel()} scores")
    order = torch.sort(scores.detach().double().cpu(), descending=True, stable=True).indices
    return order[:k]


def acquire(
    strategy: str,
    k: int,
    *,
    logits: torch.Tensor,
    hidden: torch.Tensor | None = None,
    mc_logits: torch.Tensor | None = None,
    generator: torch.Generator,
) -> torch.Tensor:
    """Positions (into the rows of ``logits``) of the ``k`` pool images ``strategy`` picks.

    ``logits`` ``(B, N)`` are the acquiring classifier's outputs, ``hidden`` ``(B, D)`` the input
    of its last linear layer (``badge``), ``mc_logits`` ``(S, B, N)`` its MC-dropout samples
    (``MC_STRATEGIES``); ``generator`` seeds ``random``, ``badge`` and ``batchbald``'s sampled
    configurations.
    """
    n = logits.shape[0]
    if strategy == "random":
        return torch.randperm(n, generator=generator)[:k]
    if strategy == "badge":
        if hidden is None:
            raise ValueError("badge needs the input of the last linear layer (hidden)")
        return kmeans_pp(*badge_factors(logits, hidden), k, generator=generator)
    if strategy in MC_STRATEGIES:
        if mc_logits is None:
            raise ValueError(f"{strategy} needs MC-dropout samples (mc_logits)")
        samples = mc_logits.double().softmax(-1)
        if strategy == "batchbald":
            return batchbald(samples, k, generator=generator).indices
        return top_k(bald(samples), k)
    probs = logits.double().softmax(-1)
    scores = {"entropy": entropy, "least_confidence": least_confidence, "margin": margin}
    if strategy not in scores:
        raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    return top_k(scores[strategy](probs), k)
