"""BatchBALD acquisition against a brute-force joint entropy and Baal's implementation."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
import torch

from introspect.active import acquire, bald, batchbald

pytestmark = pytest.mark.usefixtures("single_thread")


def mc_probs(samples: int, pool: int, classes: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (2.0 * torch.randn(samples, pool, classes, generator=gen, dtype=torch.float64)).softmax(
        -1
    )


def brute_force_information(probs: torch.Tensor, batch: list[int]) -> float:
    """``H(y_A) − Σ E_ω H(y_i | ω)`` by enumerating every label configuration of ``batch``."""
    joint = 0.0
    for labels in itertools.product(range(probs.shape[2]), repeat=len(batch)):
        p = float(
            torch.stack([probs[:, i, y] for i, y in zip(batch, labels, strict=True)]).prod(0).mean()
        )
        joint -= p * math.log(p) if p > 0 else 0.0
    conditional = -(probs[:, batch] * probs[:, batch].log()).sum(2).mean(0).sum()
    return joint - float(conditional)


def test_exact_batchbald_is_the_greedy_brute_force() -> None:
    probs = mc_probs(6, 9, 3, seed=0)
    got = batchbald(probs, 4)
    chosen: list[int] = []
    for step in range(4):
        gains = {
            c: brute_force_information(probs, [*chosen, c]) for c in range(9) if c not in chosen
        }
        best = max(gains, key=lambda c: (gains[c], -c))
        assert int(got.indices[step]) == best
        chosen.append(best)
        assert float(got.scores[step]) == pytest.approx(gains[best], abs=1e-10)
    # the first pick is BALD's
    assert int(got.indices[0]) == int(bald(probs).argmax())


def test_duplicates_are_not_picked_twice() -> None:
    probs = mc_probs(8, 6, 4, seed=1)
    top = int(bald(probs).argmax())
    probs = torch.cat([probs, probs[:, top : top + 1]], 1)  # a copy of the most informative
    picks = batchbald(probs, 2).indices.tolist()
    assert picks[0] == top and picks[1] != 6  # the copy adds no information


def test_sampled_joint_entropy_estimates_the_exact_one() -> None:
    probs = mc_probs(10, 12, 3, seed=2)
    exact = batchbald(probs, 4)
    sampled = batchbald(
        probs, 4, max_configurations=0, draws=4000, generator=torch.Generator().manual_seed(0)
    )
    assert sampled.indices.tolist() == exact.indices.tolist()
    assert torch.allclose(sampled.joint_entropy, exact.joint_entropy, atol=0.02)


def test_agrees_with_baal_on_the_same_draws() -> None:
    heuristics = pytest.importorskip("baal.active.heuristics")
    probs = mc_probs(10, 60, 4, seed=3)
    k, draws = 5, 200
    started = time.perf_counter()
    ours = batchbald(
        probs, k, max_configurations=0, draws=draws, generator=torch.Generator().manual_seed(7)
    )
    ours_s = time.perf_counter() - started
    torch.manual_seed(7)
    started = time.perf_counter()
    # Baal picks BALD's best first and then num_samples more; it reports per pick the joint
    # entropy of the batch so far minus the pick's own expected entropy.
    theirs = heuristics.BatchBALD(num_samples=k - 1, num_draw=draws).compute_score(
        probs.permute(1, 2, 0).numpy()
    )
    theirs_s = time.perf_counter() - started
    picked = np.flatnonzero(theirs)
    assert sorted(picked.tolist()) == sorted(ours.indices.tolist())
    want = torch.from_numpy(theirs[ours.indices.numpy()])
    assert torch.allclose(ours.joint_entropy - ours.conditional_entropy, want, atol=1e-9)
    print(f"BatchBALD: ours {ours_s:.4f} s, Baal {theirs_s:.4f} s")


def test_acquire_batchbald_needs_samples() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 5, generator=gen)
    mc = torch.randn(6, 20, 5, generator=gen)
    picks = acquire("batchbald", 4, logits=logits, mc_logits=mc, generator=gen)
    assert picks.tolist() == batchbald(mc.double().softmax(-1), 4).indices.tolist()
    with pytest.raises(ValueError, match="batchbald needs MC-dropout samples"):
        acquire("batchbald", 4, logits=logits, generator=gen)


def test_the_loop_passes_mc_samples_to_batchbald() -> None:
    from introspect.active.loop import select

    gen = torch.Generator().manual_seed(1)
    logits, mc = torch.randn(15, 4, generator=gen), torch.randn(5, 15, 4, generator=gen)
    outputs = {"ff_logits": logits, "ff_mc": mc.transpose(0, 1)}
    picks = select("batchbald", "feedforward", outputs, 3, seed=0)
    assert picks == batchbald(mc.double().softmax(-1), 3).indices.tolist()
