"""Compare finished runs: one table across runs (seeds pooled into mean ± std), an accuracy-vs-ECE
scatter plot and per-severity curves, saved as Markdown, CSV and PNG and logged to W&B."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from introspect.report.compare_active import compare_active
from introspect.report.comparison import (
    comparison_dir,
    group_intervals,
    group_runs,
    group_table,
    log_comparison,
    markdown,
    severity_curves,
    write_outputs,
)
from introspect.report.differences import PREDICTIONS, as_record
from introspect.report.experiments import CompareError, WandbTarget
from introspect.runs.finished import (
    FinishedRun,
    FinishedRunError,
    is_active_run,
    open_finished_run,
)
from introspect.runs.integrity import records_notes, seals_beside
from introspect.runs.status import describe as describe_status
from introspect.runs.status import read_status


def load_run(path: str | os.PathLike[str], *, allow_modified: bool = False) -> FinishedRun:
    """The finished run in ``path`` (``runs.finished.open_finished_run``); ``CompareError``
    naming the fix when it cannot be compared."""
    try:
        return open_finished_run(path, allow_modified=allow_modified)
    except FinishedRunError as err:
        raise CompareError(str(err)) from None


def compare(
    paths: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    wandb: bool = False,
    target: WandbTarget | None = None,
    allow_modified: bool = False,
) -> dict[str, Any]:
    """Build the comparison of the runs in ``paths``; write ``comparison.md``, ``comparison.csv``,
    ``accuracy_vs_ece.png`` and ``severity_curves.png`` to ``out_dir`` (default: next to the
    runs) and log them to W&B when ``wandb``, to ``target`` (default: offline, project
    ``introspect``); the runs' own logger settings are never used. Runs
    trained with a Table-1 ``stage1.recipe`` also get the Table-1 layout (``runs.table1``),
    first in ``comparison.md`` and alone in ``table1.md``.

    Runs whose ``status.json`` says they are not complete (running, killed or failed) are
    skipped with a message on stderr and listed under ``"skipped"``. A run whose results.json
    does not match its integrity digest is refused (``CompareError``) unless ``allow_modified``;
    such runs are marked ``(modified)`` in every table and named in a note line, as are (in a
    note line only) runs whose record has no digest, written by an older version.

    Accuracy differences get their 95 % paired bootstrap interval and verdict where every run
    of a group sealed ``predictions.npz`` (``group_intervals``); older runs get ``—`` and a note
    line.

    Returns ``{"out_dir", "markdown", "groups": [{label, runs, table, intervals}], "skipped"}``.
    """
    complete, skipped = complete_runs(paths)
    active = [is_active_run(p) for p in complete]
    if any(active):
        if not all(active):
            raise CompareError(
                "active-learning runs (active.json) and two-stage runs (results.json) cannot be "
                "compared together; compare each kind separately"
            )
        log_to = (target or WandbTarget()) if wandb else None
        report = compare_active(complete, out_dir, log_to=log_to, allow_modified=allow_modified)
        return report | {"skipped": skipped}
    runs = [load_run(p, allow_modified=allow_modified) for p in complete]
    if len({r.path for r in runs}) != len(runs):
        raise CompareError("a run directory is listed twice; list each run once")
    groups = group_runs(runs)
    tables = [group_table(g) for g in groups]
    found = [group_intervals(g) for g in groups]
    intervals = [ci for ci, _ in found]
    out = comparison_dir(out_dir, [r.path for r in runs])
    text = markdown(groups, tables, intervals)
    notes = records_notes({r.path: r.record for r in runs}, "results.json")
    notes += [n for _, group_notes in found for n in group_notes]
    older = [str(r.path) for r in runs if not seals_beside(r.results, PREDICTIONS)]
    if older:
        notes.append(
            f"Note: {len(older)} run(s) have no sealed {PREDICTIONS} (written by an older "
            f"version), so their groups have no confidence intervals (—): {', '.join(older)}."
        )
    text += "".join(f"\n{n}\n" for n in notes)
    text = write_outputs(out, text, groups, tables, intervals)
    images = [out / "accuracy_vs_ece.png"]
    if severity_curves(out / "severity_curves.png", groups) is not None:
        images.append(out / "severity_curves.png")
    if wandb:
        log_comparison(out, runs, groups, tables, images, target or WandbTarget())
    return {
        "out_dir": out,
        "skipped": skipped,
        "markdown": text,
        "groups": [
            {
                "label": g.label,
                "runs": [str(r.path) for r in g.runs],
                "table": t,
                "intervals": {k: as_record(d) for k, d in ci.items()},
            }
            for g, t, ci in zip(groups, tables, intervals, strict=True)
        ],
    }


def complete_runs(
    paths: Sequence[str | os.PathLike[str]],
) -> tuple[list[str | os.PathLike[str]], list[str]]:
    """``paths`` split into the runs that ``status.json`` does not call unfinished and the
    skipped ones (each named on stderr); ``CompareError`` when none is left."""
    if not paths:
        raise CompareError("give at least one run directory to compare")
    skipped: list[str] = []
    complete: list[str | os.PathLike[str]] = []
    for path in paths:
        status = read_status(Path(path).expanduser())
        if status is not None and status.get("state") != "complete":
            print(
                f"skipping {path}: the run is not complete ({describe_status(status)})",
                file=sys.stderr,
            )
            skipped.append(str(path))
        else:
            complete.append(path)
    if not complete:
        raise CompareError(f"none of the runs is complete (skipped: {', '.join(skipped)})")
    return complete, skipped
