"""The records of the ``scores`` command as text: ``scores.md`` and the scalars logged."""

from __future__ import annotations

from typing import Any

from introspect.scores.tables import format_ood_table

DETECTOR = "purview_detector_supervised"
MARKDOWN_OOD_METRICS = ("auroc", "fpr95_ood", "fpr95_id", "aupr_in", "aupr_out")
TRUST_NOTE = (
    "Feed-forward scores rank the backbone's predictions, int_* scores the introspective "
    "head's predictions."
)
DETECTOR_NOTE = (
    f"{DETECTOR} is supervised: one PurviewDetector per OOD set, trained on a seeded half of "
    "that set and of the in-distribution samples and evaluated on the other halves; it is not "
    "comparable with the unsupervised scores."
)


def format_trust_splits(table: dict[str, dict[str, dict[str, float]]], digits: int = 2) -> str:
    """Markdown of ``table[score][split] = {"auac", "aufc"}``: one row per score, one AUAC and
    one AUFC column per split, in percent."""
    splits = list(next(iter(table.values()), {}))
    header = ["score"] + [f"{s} {m}" for s in splits for m in ("AUAC", "AUFC")]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for name, by_split in table.items():
        cells = [f"{100 * by_split[s][m]:.{digits}f}" for s in splits for m in ("auac", "aufc")]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    note = "Area under the accuracy (AUAC) and macro-F1 (AUFC) curves, in %; higher is better."
    return note + " " + TRUST_NOTE + "\n\n" + "\n".join(lines)


def scores_markdown(
    run_name: str,
    settings: dict[str, Any],
    ood: dict[str, Any] | None,
    trust: dict[str, Any] | None,
) -> str:
    """``scores.md`` of the run ``run_name``: its ``scores.*`` settings, the OOD table and the
    trust table of the results' sections ``ood`` and ``trust`` (either may be None)."""
    shown = ", ".join(f"{k}={v}" for k, v in settings.items() if k != "ood")
    parts = [f"# Scores of run {run_name}", f"Settings (scores.*): {shown}."]
    if ood is not None:
        counts = ood["num_samples"]
        sizes = ", ".join(f"{k} {v}" for k, v in counts["ood_sets"].items())
        parts += [
            "## OOD detection",
            f"In-distribution: the clean test split ({counts['in_distribution']} samples); "
            f"OOD sets: {sizes}.",
            format_ood_table(ood["scores"], MARKDOWN_OOD_METRICS),
        ]
        if DETECTOR in ood["scores"]:
            parts.append(DETECTOR_NOTE)
    if trust is not None:
        sizes = ", ".join(f"{k} {v}" for k, v in trust["num_samples"].items())
        parts += ["## Trust", f"Samples: {sizes}.", format_trust_splits(trust["scores"])]
    return "\n\n".join(parts) + "\n"


def flat_scalars(
    ood: dict[str, Any] | None, trust: dict[str, Any] | None, detection: dict[str, Any] | None
) -> dict[str, float]:
    """Every metric of the results' sections as ``scores/<task>/<score>/<set>/<metric>``
    scalars, for the loggers."""
    flat: dict[str, float] = {}
    for task, section in (("ood", ood), ("trust", trust), ("detection", detection)):
        if section is None:
            continue
        key = "detectors" if task == "detection" else "scores"
        for score, by_set in section[key].items():
            for name, metrics in by_set.items():
                flat |= {f"scores/{task}/{score}/{name}/{m}": v for m, v in metrics.items()}
    return flat
