"""The seeds' Table 1 (introspection on top of stage-1 robustness recipes, CIFAR-10-C) beside
ours: one row per ``stage1.recipe``, feed-forward / introspective / control accuracy and ECE
over the corruption cells, from the comparison of finished runs (``runs.compare``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Seed 003 (Table 1, "Introspecting on top of existing robustness techniques"): accuracy in %
# on CIFAR-10-C of ResNet-18 stage-1 networks, feed-forward -> introspective. The seed gives no
# ECE for this table.
SEED_TABLE1: dict[str, tuple[float, float]] = {
    "standard": (67.89, 71.4),
    "denoising": (65.02, 68.86),
    "adversarial": (68.02, 70.86),
    "simclr": (70.28, 73.32),
    "noise": (76.86, 77.98),
    "augmix": (89.85, 89.89),
}
SEED_NAMES = {
    "standard": "ResNet-18",
    "denoising": "Denoising",
    "adversarial": "Adversarial train",
    "simclr": "SimCLR",
    "noise": "Augment noise",
    "augmix": "AugMix",
}


def stage1_recipe_of(config: dict[str, Any]) -> str:
    """A run's ``stage1.recipe`` (``custom`` for runs made before recipes existed)."""
    return str(config.get("stage1", {}).get("recipe", "custom"))


def _pct(stat: tuple[float, float] | None, n: int, signed: bool = False) -> str:
    if stat is None:
        return "–"
    mean, std = 100 * stat[0], 100 * stat[1]
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return f"{text} ± {std:.2f}" if n > 1 else text


def table1_markdown(
    labels: Sequence[str],
    recipes: Sequence[str],
    seeds: Sequence[int],
    tables: Sequence[dict[str, tuple[float, float]]],
) -> str | None:
    """Markdown of the Table-1 layout for the groups (``labels``, their stage-1 ``recipes``,
    seed counts and ``report.comparison.group_table`` tables) trained with a Table-1 recipe, in the
    seed's row order; None when no group has one. Columns: the seed's FF and INT accuracy,
    ours (FF, INT, CTL, CTL(h,p), INT−FF; ``–`` for a head a run lacks) on the mean over the
    corruption cells, their ECE, and the clean FF accuracy of the stage-1 network."""
    rows = [
        (recipe, label, n, table)
        for label, recipe, n, table in zip(labels, recipes, seeds, tables, strict=True)
        if recipe in SEED_TABLE1
    ]
    if not rows:
        return None
    rows.sort(key=lambda r: list(SEED_TABLE1).index(r[0]))
    lines = [
        "**Table 1 layout: stage-1 recipes, mean over the corruption cells (seed 003's Table 1 "
        "beside ours)**",
        "",
        "| recipe | run | seeds | seed FF acc | seed INT acc | seed INT−FF | FF acc | INT acc "
        "| CTL acc | CTL(h,p) acc | INT−FF acc | FF ECE | INT ECE | CTL ECE | CTL(h,p) ECE "
        "| INT−FF ECE | clean FF acc |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for recipe, label, n, t in rows:
        ff, intro = SEED_TABLE1[recipe]
        ours = [
            _pct(t.get(f"corrupted/{h}/{m}"), n, signed="-" in h)
            for m in ("acc", "ece")
            for h in ("FF", "INT", "CTL", "CTL(h,p)", "INT-FF")
        ]
        clean = _pct(t.get("clean/FF/acc"), n)
        lines.append(
            f"| {SEED_NAMES[recipe]} | {label} | {n} | {ff:.2f} | {intro:.2f} | "
            f"{intro - ff:+.2f} | " + " | ".join(ours) + f" | {clean} |"
        )
    lines += [
        "",
        "Values in %; ours: mean ± sample std over seeds; the seed's numbers are ResNet-18 on "
        "CIFAR-10-C (its Table 1 gives accuracy only, no ECE).",
    ]
    return "\n".join(lines) + "\n"
