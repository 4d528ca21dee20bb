"""BatchBALD (Kirsch et al. 2019): a batch whose joint mutual information with the model
parameters is large, chosen greedily.

With ``S`` MC-dropout samples ``p(y | x, ω_s)`` the batch ``A`` scores
``a(A) = H(y_A) − Σ_{i∈A} E_ω H(y_i | ω)``, where the joint predictive of the batch is
``P(y_A) = (1/S) Σ_s Π_{i∈A} p(y_i | ω_s)``. Each step adds the pool point that raises ``a`` the
most. The joint entropy ``H(y_A ∪ {y_c})`` is exact while the batch's label configurations
``N^|A|`` number at most ``max_configurations``; beyond that, configurations ``ŷ_A`` are drawn
(``draws`` per MC sample: ``ω_s`` then ``ŷ_i ~ p(· | ω_s)``, fresh at every step) and the
entropy is estimated by importance weighting, ``H ≈ mean_ŷ [−Σ_y P(ŷ, y) log P(ŷ, y) / P(ŷ)]``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

# Elements of the (configurations, candidates, classes) block computed at once.
_BLOCK = 1 << 22


class BatchBALD(NamedTuple):
    """The greedy picks in order (``indices``, ``(k,)``) and after each pick the batch's
    mutual information ``a`` (``scores``), joint entropy ``H(y_A)`` (``joint_entropy``) and the
    pick's expected conditional entropy ``E_ω H(y | ω)`` (``conditional_entropy``)."""

    indices: torch.Tensor
    scores: torch.Tensor
    joint_entropy: torch.Tensor
    conditional_entropy: torch.Tensor


def _joint_entropies(
    configurations: torch.Tensor, weights: torch.Tensor, probs: torch.Tensor
) -> torch.Tensor:
    """``(B,)`` ``Σ_m w_m Σ_y −P(ŷ_m, y) log P(ŷ_m, y)`` with ``P(ŷ_m, y) = mean_s
    configurations[m, s] · probs[s, b, y]`` for every pool point ``b`` (in blocks)."""
    samples, pool, classes = probs.shape
    rows = configurations.shape[0]
    step = max(1, _BLOCK // max(1, rows * classes))
    out = torch.empty(pool, dtype=probs.dtype, device=probs.device)
    for begin in range(0, pool, step):
        block = probs[:, begin : begin + step].reshape(samples, -1)
        joint = (configurations @ block / samples).view(rows, -1, classes)
        out[begin : begin + step] = (
            -torch.special.xlogy(joint, joint).sum(2) * weights[:, None]
        ).sum(0)
    return out


def batchbald(
    samples: torch.Tensor,
    k: int,
    *,
    max_configurations: int = 10_000,
    draws: int | None = None,
    generator: torch.Generator | None = None,
) -> BatchBALD:
    """The ``k`` pool points BatchBALD picks from ``samples`` ``(S, B, N)`` (MC probabilities).

    ``max_configurations``: the largest ``N^|A|`` for which joint entropies are exact;
    ``draws``: configurations drawn per MC sample beyond it (default ``max_configurations //
    S``, at least 1), with ``generator``. Computed in float64 on ``samples``' device; ties go
    to the lower index.
    """
    if samples.ndim != 3 or samples.shape[2] < 2:
        raise ValueError(f"samples must be (S, B, classes >= 2), got {tuple(samples.shape)}")
    count, pool, classes = samples.shape
    if not 0 <= k <= pool:
        raise ValueError(f"cannot pick k={k} of {pool} pool points")
    draws = max(1, max_configurations // count) if draws is None else draws
    if draws < 1:
        raise ValueError(f"draws must be positive, got {draws}")
    probs = samples.detach().double()
    conditional = -torch.special.xlogy(probs, probs).sum(2).mean(0)  # (B,)
    chosen: list[int] = []
    scores, joints, conditionals = [], [], []
    # P(ŷ_A | ω_s) of every configuration of the batch while they are few enough, else None
    table: torch.Tensor | None = torch.ones(1, count, dtype=probs.dtype, device=probs.device)
    available = torch.ones(pool, dtype=torch.bool, device=probs.device)
    total_conditional = probs.new_zeros(())
    for _ in range(k):
        if table is not None:
            weights = torch.ones(table.shape[0], dtype=probs.dtype, device=probs.device)
            configurations = table
        else:
            configurations = _sampled(probs[:, chosen], draws, generator)
            weights = 1.0 / (configurations.mean(1) * configurations.shape[0])
        joint = _joint_entropies(configurations, weights, probs)
        gain = (joint - conditional).masked_fill(~available, float("-inf"))
        pick = int(torch.argmax(gain.cpu()))
        chosen.append(pick)
        available[pick] = False
        total_conditional = total_conditional + conditional[pick]
        joints.append(joint[pick])
        conditionals.append(conditional[pick])
        scores.append(joint[pick] - total_conditional)
        if table is not None and table.shape[0] * classes <= max_configurations:
            table = (table[:, None, :] * probs[:, pick].T[None]).reshape(-1, count)
        else:
            table = None
    empty = probs.new_zeros(0)
    return BatchBALD(
        torch.tensor(chosen, dtype=torch.long),
        torch.stack(scores).cpu() if chosen else empty.cpu(),
        torch.stack(joints).cpu() if chosen else empty.cpu(),
        torch.stack(conditionals).cpu() if chosen else empty.cpu(),
    )


def _sampled(chosen: torch.Tensor, draws: int, generator: torch.Generator | None) -> torch.Tensor:
    """``(S · draws, S)`` ``P(ŷ_m | ω_s)`` of configurations ``ŷ_m`` of the chosen points
    (``chosen``: ``(S, n, N)``), ``draws`` of them drawn from each MC sample's predictive."""
    count, n, classes = chosen.shape
    per_sample = chosen.permute(1, 0, 2).reshape(-1, classes)  # (n · S, N), point-major
    labels = torch.multinomial(per_sample.cpu(), draws, replacement=True, generator=generator)
    labels = labels.to(chosen.device).view(n, count, draws)  # label of point i in draw (s', m)
    # P(ŷ_i = labels[i, s', m] | ω_s) for every s: (n, S_s, S_s', draws)
    picked = chosen.permute(1, 0, 2)[:, :, None, None, :].expand(n, count, count, draws, classes)
    index = labels[:, None, :, :, None].expand(n, count, count, draws, 1)
    likelihood = picked.gather(4, index)[..., 0].log().sum(0).exp()  # (S_s, S_s', draws)
    return likelihood.reshape(count, -1).T
