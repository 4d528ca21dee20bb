"""The rounds of pool-based active learning, one learning curve per strategy and source.

Training, scoring and evaluation are passed in (the run lifecycle in ``runs.active`` builds them
from the config), so this module only decides what is labelled when. Round 0 (the initial
labelled set) is the same for every curve and is trained once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from introspect.active.heuristics import MC_STRATEGIES, acquire
from introspect.active.pool import LabelPool
from introspect.data.seeding import derive_seed

SOURCES: tuple[str, ...] = ("feedforward", "introspective")
_PREFIX = {"feedforward": "ff", "introspective": "int"}
# Random acquisition ignores the classifier: one curve serves both sources.
SOURCE_FREE = "any"

Metrics = dict[str, dict[str, dict[str, float]]]  # head -> split -> metric -> value


class Learner(Protocol):
    """What the loop needs from the run: train on a pool, score images, evaluate."""

    def fit(self, pool: LabelPool, previous: Any, tag: str) -> Any:
        """Models (stage 1 and the introspective head) trained on the pool's labelled images;
        ``previous`` are the models of the round before (for warm starts), ``tag`` names the
        round for seeding."""

    def outputs(self, models: Any, pool: LabelPool, *, mc: bool, key: str) -> dict[str, Any]:
        """``batch_outputs`` of every unlabelled image of ``pool``, in ``pool.unlabelled`` order."""

    def evaluate(self, models: Any) -> Metrics:
        """Accuracy and ECE of both heads on the clean and the noisy test split."""


class Progress(Protocol):
    """Where finished rounds are kept, so that a killed run continues from them."""

    def load(self, key: str) -> tuple[list[dict[str, Any]], Any] | None:
        """The rounds recorded under ``key`` and the models trained in the last of them, or
        ``None`` when nothing is recorded."""

    def save(self, key: str, rounds: list[dict[str, Any]], models: Any) -> None:
        """Record ``rounds`` under ``key`` with the models trained in the last of them."""


# The key of round 0 (shared by every curve) in a ``Progress``.
BASE = "round0"


@dataclass(frozen=True)
class Schedule:
    """How many images are labelled when: ``initial`` at round 0, then ``per_round`` in each of
    ``rounds`` rounds."""

    initial: int
    per_round: int
    rounds: int


def curve_keys(strategies: Sequence[str], sources: Sequence[str]) -> list[tuple[str, str]]:
    """``(strategy, source)`` of every curve: random once (source ``any``), the others per
    source."""
    keys: list[tuple[str, str]] = []
    for strategy in strategies:
        if strategy == "random":
            keys.append((strategy, SOURCE_FREE))
        else:
            keys += [(strategy, source) for source in sources]
    return keys


def select(
    strategy: str,
    source: str,
    outputs: dict[str, torch.Tensor],
    k: int,
    *,
    seed: int,
) -> list[int]:
    """Positions into the scored images that ``strategy`` on ``source``'s outputs acquires."""
    prefix = _PREFIX.get(source, "ff")
    gen = torch.Generator().manual_seed(seed)
    picked = acquire(
        strategy,
        k,
        logits=outputs[f"{prefix}_logits"],
        hidden=outputs.get(f"{prefix}_hidden"),
        mc_logits=outputs[f"{prefix}_mc"].transpose(0, 1) if strategy in MC_STRATEGIES else None,
        generator=gen,
    )
    return picked.tolist()


def area_under_curve(counts: Sequence[int], values: Sequence[float]) -> float:
    """Trapezoidal area under ``values`` against ``counts``, divided by the count range (the mean
    value over the budget; the single value for a one-point curve)."""
    if len(counts) == 1:
        return float(values[0])
    x, y = np.asarray(counts, dtype=float), np.asarray(values, dtype=float)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / (x[-1] - x[0]))


def curve_areas(rounds: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Area under every head × split × metric curve of one strategy/source."""
    counts = [r["labelled"] for r in rounds]
    first = rounds[0]["metrics"]
    return {
        head: {
            split: {
                m: area_under_curve(counts, [r["metrics"][head][split][m] for r in rounds])
                for m in first[head][split]
            }
            for split in first[head]
        }
        for head in first
    }


def run_curves(
    learner: Learner,
    pool: LabelPool,
    schedule: Schedule,
    strategies: Sequence[str],
    sources: Sequence[str],
    *,
    seed: int,
    on_round: Callable[[str, str, dict[str, Any]], None] | None = None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Learning curves of every strategy × source from the labelled set of ``pool``.

    Returns ``[{strategy, source, rounds: [{round, labelled, acquired, metrics}], area}]``;
    ``on_round(strategy, source, entry)`` is called for each round (also for rounds restored
    from ``progress``). With ``progress``, every finished round is saved there and the rounds
    already recorded are restored instead of run again: training, acquisition and MC-dropout
    masks are seeded per round, so a continued run equals an uninterrupted one.
    """
    need = schedule.initial + schedule.per_round * schedule.rounds
    if need > pool.size:
        raise ValueError(
            f"the schedule labels {need} images but the pool holds {pool.size}; lower "
            "active.initial, active.per_round or active.rounds"
        )
    saved = progress.load(BASE) if progress is not None else None
    if saved is not None:
        (start,), base = saved
    else:
        base = learner.fit(pool, None, BASE)
        base_metrics = learner.evaluate(base)
        start = {
            "round": 0,
            "labelled": len(pool.labelled),
            "acquired": [],
            "metrics": base_metrics,
        }
        if progress is not None:
            progress.save(BASE, [start], base)
    curves: list[dict[str, Any]] = []
    for strategy, source in curve_keys(strategies, sources):
        key = f"{strategy}/{source}"
        mine, models = pool.copy(), base
        rounds = [start]
        saved = progress.load(key) if progress is not None else None
        if saved is not None:
            rounds, models = saved
            if len(rounds) > schedule.rounds + 1 or rounds[0] != start:
                raise ValueError(f"the recorded rounds of {key} do not fit this schedule")
            for entry in rounds[1:]:
                mine.label(entry["acquired"])
        if on_round is not None:
            for entry in rounds:
                on_round(strategy, source, entry)
        for r in range(len(rounds), schedule.rounds + 1):
            tag = f"{key}/round{r}"
            outs = learner.outputs(models, mine, mc=strategy in MC_STRATEGIES, key=tag)
            positions = select(
                strategy, source, outs, schedule.per_round, seed=derive_seed(seed, tag)
            )
            acquired = [mine.unlabelled[p] for p in positions]
            mine.label(acquired)
            models = learner.fit(mine, models, tag)
            entry = {
                "round": r,
                "labelled": len(mine.labelled),
                "acquired": acquired,
                "metrics": learner.evaluate(models),
            }
            rounds.append(entry)
            if progress is not None:
                progress.save(key, rounds, models)
            if on_round is not None:
                on_round(strategy, source, entry)
        curves.append(
            {"strategy": strategy, "source": source, "rounds": rounds, "area": curve_areas(rounds)}
        )
    return curves
