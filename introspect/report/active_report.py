"""Tables and plots of active-learning runs: the seeds' Table-2 layout (strategy × acquiring
network × clean/noisy test split) and accuracy against the labelled count."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

ROWS = (("FF", "feedforward"), ("INT", "introspective"))
SPLITS = ("clean", "noisy")
# One cell of the table: final accuracy and ECE, and the area under the accuracy curve.
CELL = ("acc", "ece", "aulc")


def _curve(curves: Sequence[dict[str, Any]], strategy: str, head: str) -> dict[str, Any] | None:
    """The curve whose acquisitions ``head`` made (random: the one source-free curve)."""
    for c in curves:
        if c["strategy"] == strategy and c["source"] in (head, "any"):
            return c
    return None


def table_two(curves: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict]]]:
    """``{strategy: {FF|INT: {clean|noisy: {acc, ece, aulc}}}}``: each row is the network that
    acquired, evaluated itself (random: the same acquisitions, each network evaluated)."""
    table: dict[str, dict[str, dict[str, dict]]] = {}
    for strategy in dict.fromkeys(c["strategy"] for c in curves):
        table[strategy] = {}
        for short, head in ROWS:
            curve = _curve(curves, strategy, head)
            if curve is None:
                continue
            last = curve["rounds"][-1]["metrics"][head]
            table[strategy][short] = {
                split: {
                    "acc": last[split]["acc"],
                    "ece": last[split]["ece"],
                    "aulc": curve["area"][head][split]["acc"],
                }
                for split in SPLITS
            }
    return table


def _fmt(value: float | tuple[float, float]) -> str:
    if isinstance(value, tuple):
        return f"{100 * value[0]:.1f} ± {100 * value[1]:.1f}"
    return f"{100 * value:.1f}"


def table_markdown(table: dict[str, dict[str, dict[str, dict]]], *, note: str = "") -> str:
    """The table as Markdown: percentages, final round's accuracy and ECE and the area under the
    accuracy curve (AULC) per split; cells are values or ``(mean, std)`` pairs."""
    head = ["strategy", "acquired by"] + [f"{s} {m}" for s in SPLITS for m in CELL]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for strategy, rows in table.items():
        for short, cells in rows.items():
            values = [_fmt(cells[s][m]) for s in SPLITS for m in CELL]
            lines.append(f"| {strategy} | {short} | " + " | ".join(values) + " |")
    return "\n".join(lines) + (f"\n\n{note}" if note else "")


def curve_points(
    curves_per_seed: Sequence[Sequence[dict[str, Any]]], strategy: str, head: str, split: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Labelled counts, mean and std over seeds of ``head``'s accuracy on ``split`` along the
    curve ``head`` acquired with ``strategy``."""
    ys = []
    counts = None
    for curves in curves_per_seed:
        curve = _curve(curves, strategy, head)
        if curve is None:
            return None
        counts = [r["labelled"] for r in curve["rounds"]]
        ys.append([r["metrics"][head][split]["acc"] for r in curve["rounds"]])
    if counts is None:
        return None
    arr = np.asarray(ys, dtype=float)
    return np.asarray(counts), arr.mean(0), arr.std(0, ddof=1) if len(ys) > 1 else arr[0] * 0


def curve_plot(
    curves: Sequence[dict[str, Any]] | Sequence[Sequence[dict[str, Any]]], path: Path
) -> None:
    """Accuracy against labelled count, clean and noisy panels; one colour per strategy, solid
    for feed-forward and dashed for introspective acquisition (bands: ± std over seeds when a
    list of runs' curves is given)."""
    per_seed: Sequence[Sequence[dict[str, Any]]] = (
        [curves] if curves and isinstance(curves[0], dict) else curves  # type: ignore[list-item]
    )
    strategies = list(dict.fromkeys(c["strategy"] for c in per_seed[0]))
    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=False)
    colors = {s: f"C{i}" for i, s in enumerate(strategies)}
    for ax, split in zip(axes, SPLITS, strict=True):
        for strategy in strategies:
            for short, head in ROWS:
                pts = curve_points(per_seed, strategy, head, split)
                if pts is None:
                    continue
                x, mean, std = pts
                style = "-" if short == "FF" else "--"
                ax.plot(x, mean, style, color=colors[strategy], label=f"{strategy} {short}")
                if len(per_seed) > 1:
                    ax.fill_between(x, mean - std, mean + std, color=colors[strategy], alpha=0.1)
        ax.set_title(f"{split} test split")
        ax.set_xlabel("labelled images")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
