"""``evaluate.py compare`` for active-learning runs: seeds of one experiment pooled into
mean ± std of the Table-2 cells, paired introspective-minus-feed-forward differences, the same
differences with the evaluated network held fixed (which isolates the acquisition), and the
learning curves with ± std bands."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from introspect.report.active_report import CELL, ROWS, SPLITS, curve_plot, table_markdown
from introspect.report.comparison import comparison_dir
from introspect.report.experiments import (
    CompareError,
    WandbTarget,
    describe,
    experiment_key,
    mean_std,
)
from introspect.runs.finished import ACTIVE, FinishedRunError, open_finished_run
from introspect.runs.integrity import MODIFIED, records_notes
from introspect.runs.status import write_json_atomic


def pooled_table(tables: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict]]]:
    """Table-2 cells as ``(mean, std)`` over runs, with an ``INT-FF`` row per strategy holding
    the paired per-run differences (only cells every run has)."""
    out: dict[str, dict[str, dict[str, dict]]] = {}
    for strategy, rows in tables[0].items():
        out[strategy] = {}
        names = list(rows) + (["INT-FF"] if {"FF", "INT"} <= set(rows) else [])
        for row in names:
            cells: dict[str, dict] = {}
            for split in SPLITS:
                cells[split] = {}
                for m in CELL:
                    if row == "INT-FF":
                        values = [
                            t[strategy]["INT"][split][m] - t[strategy]["FF"][split][m]
                            for t in tables
                        ]
                    else:
                        values = [t[strategy][row][split][m] for t in tables]
                    cells[split][m] = mean_std(values)
            out[strategy][row] = cells
    return out


def _acquired_by(curves: Sequence[dict[str, Any]], strategy: str, source: str) -> dict | None:
    for c in curves:
        if c["strategy"] == strategy and c["source"] == source:
            return c
    return None


def acquisition_table(
    curves_per_run: Sequence[Sequence[dict[str, Any]]],
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """``{strategy: {FF|INT (evaluated): {split: cells}}}`` for every strategy with both an
    FF- and an INT-acquired curve in every run: the evaluated network's final accuracy and AULC
    on the images each source acquired, as ``(mean, std)`` over runs, the paired per-run
    differences (INT-acquired − FF-acquired) and ``wins``, the runs whose AULC difference is
    above 0."""
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    strategies = dict.fromkeys(c["strategy"] for c in curves_per_run[0])
    for strategy in strategies:
        pairs = [
            (
                _acquired_by(curves, strategy, "feedforward"),
                _acquired_by(curves, strategy, "introspective"),
            )
            for curves in curves_per_run
        ]
        if any(ff is None or it is None for ff, it in pairs):
            continue
        out[strategy] = {}
        for short, head in ROWS:
            out[strategy][short] = {}
            for split in SPLITS:
                final = [
                    [c["rounds"][-1]["metrics"][head][split]["acc"] for c in pair]  # type: ignore[index]
                    for pair in pairs
                ]
                area = [[c["area"][head][split]["acc"] for c in pair] for pair in pairs]  # type: ignore[index]
                d_area = [it - ff for ff, it in area]
                out[strategy][short][split] = {
                    "ff_final": mean_std([ff for ff, _ in final]),
                    "int_final": mean_std([it for _, it in final]),
                    "d_final": mean_std([it - ff for ff, it in final]),
                    "ff_aulc": mean_std([ff for ff, _ in area]),
                    "int_aulc": mean_std([it for _, it in area]),
                    "d_aulc": mean_std(d_area),
                    "wins": sum(d > 0 for d in d_area),
                    "runs": len(d_area),
                }
    return out


def acquisition_markdown(table: dict[str, dict[str, dict[str, dict[str, Any]]]]) -> str:
    """``acquisition_table`` as Markdown (percentages)."""
    cols = ["ff_final", "int_final", "d_final", "ff_aulc", "int_aulc", "d_aulc"]
    head = [
        "strategy",
        "evaluated",
        "split",
        "FF-acquired final",
        "INT-acquired final",
        "Δ final",
        "FF-acquired AULC",
        "INT-acquired AULC",
        "Δ AULC",
        "runs Δ AULC > 0",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for strategy, heads in table.items():
        for short, splits in heads.items():
            for split, c in splits.items():
                cells = [f"{100 * c[k][0]:.1f} ± {100 * c[k][1]:.1f}" for k in cols]
                wins = f"{c['wins']}/{c['runs']}"
                lines.append(
                    f"| {strategy} | {short} | {split} | " + " | ".join(cells) + f" | {wins} |"
                )
    return "\n".join(lines)


def compare_active(
    paths: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    log_to: WandbTarget | None = None,
    allow_modified: bool = False,
) -> dict[str, Any]:
    """Pool the seeds of active runs: ``active_comparison.md``/``.json`` and one
    ``active_curves_<k>.png`` per experiment in ``out_dir`` (default: next to the runs), logged
    to W&B when ``log_to`` names a target (never the runs' own settings). An
    ``active.json`` that does not match its integrity digest is refused unless
    ``allow_modified``; such records are marked in the experiment's heading and a note line,
    records without a digest in a note line."""
    try:
        opened = [
            open_finished_run(
                p, allow_modified=allow_modified, record_file=ACTIVE, required=("curves", "table")
            )
            for p in paths
        ]
    except FinishedRunError as err:
        raise CompareError(str(err)) from None
    runs = [(r.path, r.results) for r in opened]
    states = {r.path: r.record for r in opened}
    groups: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for path, res in runs:
        groups.setdefault(experiment_key(res["run"]["config"]), []).append((path, res))
    out = comparison_dir(out_dir, [p for p, _ in runs])
    sections, summary = [], []
    for k, members in enumerate(groups.values()):
        seeds = [int(r["run"]["seed"]) for _, r in members]
        if len(set(seeds)) != len(seeds):
            raise CompareError(
                f"runs {[str(p) for p, _ in members]} repeat seeds {seeds}; give each seed once"
            )
        table = pooled_table([r["table"] for _, r in members])
        acquisition = acquisition_table([r["curves"] for _, r in members])
        label = f"active · {describe(members[0][1]['run']['config'])}"
        if any(states[p] == MODIFIED for p, _ in members):
            label += f" ({MODIFIED})"
        seconds = [float(r["run"].get("seconds", float("nan"))) for _, r in members]
        note = (
            f"{len(members)} seeds ({', '.join(map(str, seeds))}); mean ± std (sample std) in %; "
            f"wall time per run {mean_std(seconds)[0]:.0f} ± {mean_std(seconds)[1]:.0f} s."
        )
        same_head = (
            "Same evaluated network, FF- against INT-acquired images (Δ = INT − FF, paired per "
            "seed):\n\n" + acquisition_markdown(acquisition)
        )
        sections.append(f"## {label}\n\n" + table_markdown(table, note=note) + "\n\n" + same_head)
        curve_plot([r["curves"] for _, r in members], out / f"active_curves_{k}.png")
        summary.append(
            {
                "label": label,
                "runs": [str(p) for p, _ in members],
                "table": table,
                "acquisition": acquisition,
            }
        )
    text = "\n\n".join(sections + records_notes(states, "active.json")) + "\n"
    (out / "active_comparison.md").write_text(text)
    write_json_atomic(out / "active_comparison.json", summary)
    if log_to is not None:
        _log_wandb(out, log_to, summary, text)
    return {"out_dir": out, "markdown": text, "groups": summary, "skipped": []}


def _log_wandb(out: Path, target: WandbTarget, summary: list[dict], text: str) -> None:
    """One W&B run of job type ``compare`` logged to ``target``: the pooled cells as a table,
    the curve plots."""
    import wandb

    run = wandb.init(
        job_type="compare",
        dir=str(out),
        config={"runs": [p for g in summary for p in g["runs"]]},
        **target.init_args(),
    )
    try:
        columns = ["experiment", "strategy", "acquired by"] + [
            f"{s}_{m}_{stat}" for s in SPLITS for m in CELL for stat in ("mean", "std")
        ]
        data = [
            [g["label"], strategy, row]
            + [cells[s][m][i] for s in SPLITS for m in CELL for i in (0, 1)]
            for g in summary
            for strategy, rows in g["table"].items()
            for row, cells in rows.items()
        ]
        images = sorted(out.glob("active_curves_*.png"))
        run.log(
            {
                "compare/active_table": wandb.Table(columns=columns, data=data),
                **{f"compare/{p.stem}": wandb.Image(str(p)) for p in images},
            }
        )
    finally:
        run.finish()
