"""The sanity-check table of several map methods on one batch of images."""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from introspect.explain.core import ExplanationError
from introspect.sanity.randomization import (
    MapMethod,
    even_steps,
    model_randomization,
    randomizable_layers,
)
from introspect.sanity.robustness import max_sensitivity


def evaluate_sanity(
    model: nn.Module,
    images: torch.Tensor,
    methods: Mapping[str, MapMethod],
    *,
    layer: str | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    points: int = 4,
    samples: int = 4,
    radius: float = 0.02,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, dict[str, Any]]:
    """``{method: {"randomization": [...], "max_sensitivity", "images"}}`` for ``images``.

    ``randomization`` is the cascading test's :meth:`Randomization.summary` measured at
    ``points`` steps spread from the output layer (one layer random) to all layers random;
    ``max_sensitivity`` the mean over images of :func:`max_sensitivity` with ``samples``
    perturbations of L∞ radius ``radius``.
    """
    options = options or {}
    steps = even_steps(len(randomizable_layers(model)), points)
    table: dict[str, dict[str, Any]] = {}
    for name, method in methods.items():
        common = {"layer": layer, "options": options.get(name, {}), "seed": seed}
        test = model_randomization(method, model, images, steps=steps, **common)
        sensitivity = max_sensitivity(
            method, model, images, samples=samples, radius=radius, batch_size=batch_size, **common
        )
        finite = sensitivity[sensitivity.isfinite()]
        table[name] = {
            "randomization": test.summary(),
            "max_sensitivity": float(finite.mean()) if len(finite) else math.nan,
            "images": images.shape[0],
        }
    return table


def format_sanity(table: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown of an :func:`evaluate_sanity` table: the Spearman correlation with the
    trained model's maps as layers are randomized (lower = the map depends on the weights) and
    the max-sensitivity (lower = more robust)."""
    first = next(iter(table.values()))
    counts = [row["randomized"] for row in first["randomization"]]
    head = " | ".join(f"ρ, {c} random" for c in counts)
    lines = [
        f"| method | {head} | max-sensitivity ↓ |",
        "|---|" + "---:|" * (len(counts) + 1),
    ]

    def cell(value: float) -> str:
        return "–" if math.isnan(value) else f"{value:.4f}"

    for name, row in table.items():
        rhos = " | ".join(cell(step["spearman"]) for step in row["randomization"])
        lines.append(f"| {name} | {rhos} | {cell(row['max_sensitivity'])} |")
    return "\n".join(lines)


def sanity_section(
    model: nn.Module,
    images: torch.Tensor,
    methods: Mapping[str, MapMethod],
    layer: str | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    **settings: Any,
) -> tuple[dict[str, Any], str]:
    """The sanity checks of ``methods`` on ``images`` as a record (its settings and the
    :func:`evaluate_sanity` table under ``"methods"``) and as markdown with a caption;
    ``settings`` are :func:`evaluate_sanity`'s keyword arguments (``points``, ``samples``,
    ``radius``, ``seed``, ``batch_size``)."""
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(evaluate_sanity).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("layer", "options")
    }
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise ExplanationError(f"unknown sanity settings {unknown}; valid: {sorted(defaults)}")
    settings = {**defaults, **settings}
    table = evaluate_sanity(model, images, methods, layer=layer, options=options, **settings)
    samples, radius = settings["samples"], settings["radius"]
    record = {"images": images.shape[0], "order": "cascading", **settings, "methods": table}
    caption = (
        f"On the first {images.shape[0]} images: Spearman ρ between each map and the trained "
        "network's as its layers are re-initialized from the output down (cascading; lower = "
        "the map depends on the learned weights), and the max-sensitivity ‖map(x+δ) − map(x)‖ "
        f"/ ‖map(x)‖ over {samples} uniform δ with ‖δ‖∞ ≤ {radius:g} (lower = more robust)."
    )
    return record, caption + "\n\n" + format_sanity(table)
