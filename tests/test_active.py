"""Active learning: acquisition functions against hand-written formulas, autograd and Baal's
heuristics; k-means++ seeding; the label-gated pool; one scored pass per pool image (also with
two processes); the loop end to end on digits, including a pool whose unacquired labels are
poisoned; ``evaluate.py compare`` pooling seeds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from introspect.active.heuristics import (
    acquire,
    badge_factors,
    bald,
    entropy,
    kmeans_pp,
    least_confidence,
    margin,
    top_k,
)
from introspect.active.loop import area_under_curve, curve_keys
from introspect.active.pool import LabelPool, initial_indices, shard_indices
from introspect.config import load_config

PROBS = torch.tensor(
    [
        [0.7, 0.2, 0.1],
        [1 / 3, 1 / 3, 1 / 3],
        [0.5, 0.5, 0.0],
        [0.05, 0.9, 0.05],
        [0.4, 0.35, 0.25],
    ],
    dtype=torch.float64,
)


def test_single_pass_heuristics_match_hand_written_formulas() -> None:
    for row, p in enumerate(PROBS.tolist()):
        h = -sum(x * math.log(x) for x in p if x > 0)
        top = sorted(p, reverse=True)
        assert entropy(PROBS)[row].item() == pytest.approx(h, abs=1e-12)
        assert least_confidence(PROBS)[row].item() == pytest.approx(1 - top[0], abs=1e-12)
        assert margin(PROBS)[row].item() == pytest.approx(top[1] - top[0], abs=1e-12)
    # The uniform row is the most uncertain under all three; the confident row the least.
    for fn in (entropy, least_confidence, margin):
        assert top_k(fn(PROBS), 1).item() == 1
        assert top_k(-fn(PROBS), 1).item() == 3


def test_bald_matches_its_formula_and_is_zero_when_samples_agree() -> None:
    gen = torch.Generator().manual_seed(0)
    samples = torch.rand(7, 4, 5, generator=gen, dtype=torch.float64).softmax(-1)
    for b in range(4):
        s = samples[:, b].numpy()
        mean = s.mean(0)
        expected = -(mean * np.log(mean)).sum() + (s * np.log(s)).sum(1).mean()
        assert bald(samples)[b].item() == pytest.approx(expected, abs=1e-12)
    agree = samples[:1].expand(6, -1, -1)
    assert torch.allclose(bald(agree), torch.zeros(4, dtype=torch.float64), atol=1e-12)


def test_heuristics_agree_with_baal() -> None:
    heuristics = pytest.importorskip("baal.active.heuristics")
    gen = torch.Generator().manual_seed(1)
    probs = torch.rand(50, 6, generator=gen, dtype=torch.float64).softmax(-1)
    p = probs.numpy()
    assert np.allclose(heuristics.Entropy().get_uncertainties(p), entropy(probs).numpy())
    # Baal ranks Margin and Certainty ascending on (top1 - top2) and max p.
    assert np.allclose(heuristics.Margin().get_uncertainties(p), -margin(probs).numpy())
    assert np.allclose(heuristics.Certainty().get_uncertainties(p), 1 - least_confidence(probs))
    samples = torch.rand(20, 50, 6, generator=gen, dtype=torch.float64).softmax(-1)
    baal_bald = heuristics.BALD().get_uncertainties(samples.permute(1, 2, 0).numpy())
    assert np.allclose(baal_bald, bald(samples).numpy(), atol=1e-10)
    # Baal's ranking (most informative first) equals ours where scores have no ties.
    for ours, theirs in (
        (entropy(probs), heuristics.Entropy()),
        (margin(probs), heuristics.Margin()),
        (least_confidence(probs), heuristics.Certainty()),
    ):
        assert top_k(ours, 50).tolist() == list(theirs(p))


def test_badge_embedding_is_the_autograd_gradient_at_the_predicted_label() -> None:
    gen = torch.Generator().manual_seed(2)
    linear = torch.nn.Linear(7, 4).double()
    h = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    logits = linear(h).detach()
    g, hh = badge_factors(logits, h)
    for i in range(5):
        linear.zero_grad()
        z = linear(h[i : i + 1])
        F.cross_entropy(z, z.argmax(-1)).backward()
        assert torch.allclose(torch.outer(g[i], hh[i]), linear.weight.grad, atol=1e-12)


def _reference_kmeans_pp(emb: np.ndarray, k: int, gen: torch.Generator) -> list[int]:
    """k-means++ (BADGE's first centre: the largest norm) on materialized embeddings."""
    chosen = [int(np.argmax((emb**2).sum(1)))]
    d2 = ((emb - emb[chosen[0]]) ** 2).sum(1)
    while len(chosen) < k:
        w = d2.copy()
        w[chosen] = 0
        nxt = int(torch.multinomial(torch.from_numpy(w), 1, generator=gen))
        chosen.append(nxt)
        d2 = np.minimum(d2, ((emb - emb[nxt]) ** 2).sum(1))
    return chosen


def test_kmeans_pp_on_factors_matches_materialized_embeddings() -> None:
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    h = torch.randn(40, 9, generator=gen, dtype=torch.float64)
    emb = torch.einsum("bn,bd->bnd", g, h).reshape(40, -1).numpy()
    ours = kmeans_pp(g, h, 8, generator=torch.Generator().manual_seed(5)).tolist()
    assert ours == _reference_kmeans_pp(emb, 8, torch.Generator().manual_seed(5))
    assert ours == kmeans_pp(g, h, 8, generator=torch.Generator().manual_seed(5)).tolist()
    assert len(set(ours)) == 8


def test_kmeans_pp_covers_separated_clusters_and_skips_duplicates() -> None:
    centres = torch.eye(4, dtype=torch.float64) * 100
    g = torch.ones(40, 1, dtype=torch.float64)
    jitter = torch.randn(40, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h = centres.repeat_interleave(10, 0) + 0.01 * jitter
    picked = kmeans_pp(g, h, 4, generator=torch.Generator().manual_seed(1))
    assert sorted((picked // 10).tolist()) == [0, 1, 2, 3]
    # Two distinct points and copies: the copies have distance 0 and are only taken last.
    g2 = torch.ones(6, 1, dtype=torch.float64)
    h2 = torch.tensor([[1.0], [1.0], [1.0], [5.0], [5.0], [1.0]], dtype=torch.float64)
    first_two = kmeans_pp(g2, h2, 2, generator=torch.Generator().manual_seed(0)).tolist()
    assert {int(h2[i, 0]) for i in first_two} == {1, 5}


def test_acquire_is_deterministic_for_a_seed_and_picks_distinct_images() -> None:
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(30, 10, generator=gen)
    hidden = torch.randn(30, 16, generator=gen)
    mc = torch.randn(8, 30, 10, generator=gen)
    for strategy in ("random", "entropy", "least_confidence", "margin", "bald", "badge"):
        picks = [
            acquire(
                strategy,
                6,
                logits=logits,
                hidden=hidden,
                mc_logits=mc,
                generator=torch.Generator().manual_seed(9),
            ).tolist()
            for _ in range(2)
        ]
        assert picks[0] == picks[1] and len(set(picks[0])) == 6, strategy
    with pytest.raises(ValueError, match="unknown strategy"):
        acquire("coreset", 2, logits=logits, generator=gen)


def test_top_k_breaks_ties_by_lower_index() -> None:
    assert top_k(torch.tensor([1.0, 3.0, 3.0, 0.0, 3.0]), 3).tolist() == [1, 2, 4]


def test_area_under_curve_is_the_normalized_trapezoid() -> None:
    x, y = [20, 40, 80], [0.5, 0.7, 0.8]
    assert area_under_curve(x, y) == pytest.approx(np.trapezoid(y, x) / 60)
    assert area_under_curve([20], [0.4]) == 0.4


@pytest.mark.parametrize("n", [0, 1, 5, 101])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_score_every_pool_image_exactly_once(n: int, world: int) -> None:
    scored = [i for rank in range(world) for i in shard_indices(n, rank, world)]
    assert scored == list(range(n))


class _Recorded(torch.utils.data.Dataset):
    """Images with labels whose reads are recorded (a label read is an ``int()`` of it)."""

    def __init__(self, n: int) -> None:
        self.n, self.read = n, []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        outer = self

        class Label:
            def __int__(self) -> int:
                outer.read.append(i)
                return i % 3

        return torch.full((3, 2, 2), float(i)), Label()


def test_pool_reads_labels_only_of_acquired_images() -> None:
    data = _Recorded(12)
    pool = LabelPool(data, [3, 7])
    images = pool.unlabelled_images()
    _ = [images[i] for i in range(len(images))]
    assert data.read == [3, 7] and len(images) == 10
    pool.label([0, 11])
    assert data.read == [3, 7, 0, 11] and pool.labels == [0, 1, 0, 2]
    twin = pool.copy()
    twin.label([5])
    assert pool.labelled == [3, 7, 0, 11] and twin.labelled == [3, 7, 0, 11, 5]
    with pytest.raises(ValueError, match="twice"):
        pool.label([3])
    assert initial_indices(12, 4, seed=0) == initial_indices(12, 4, seed=0)


def test_curve_keys_run_random_once() -> None:
    keys = curve_keys(["random", "bald"], ["feedforward", "introspective"])
    assert keys == [("random", "any"), ("bald", "feedforward"), ("bald", "introspective")]
