"""Comparison of finished two-stage runs as tables and figures: seeds of one experiment pooled
into mean ± std per head and scope, paired differences with bootstrap intervals, Markdown and CSV
tables, an accuracy-vs-ECE scatter plot and per-severity curves (``evaluate.py compare``)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from introspect.config.loader import leaf_paths
from introspect.corruptions.cells import is_cell
from introspect.metrics.layout import fit_legend, fit_suptitle, fit_text
from introspect.metrics.paired import PairedDifference
from introspect.report.differences import (
    LABELS,
    LEVEL,
    PREDICTIONS,
    PredictionsError,
    ece_differences,
    pair_differences,
    read_predictions,
    scopes,
)
from introspect.report.experiments import (
    CompareError,
    WandbTarget,
    describe,
    differing_keys,
    experiment_key,
    identity,
    mean_std,
    recipe,
)
from introspect.report.names import HEADS, SHORT
from introspect.report.table1 import stage1_recipe_of, table1_markdown
from introspect.runs.finished import FinishedRun
from introspect.runs.integrity import MODIFIED, seals_beside

SHORT_NAMES = {
    "FF": "feed-forward",
    "FF+TS": "feed-forward + TS",
    "INT": "introspective",
    "INT+TS": "introspective + TS",
    "CTL": "control",
    "CTL+TS": "control + TS",
    "CTL(h,p)": "control on h and p",
    "CTL(h,p)+TS": "control on h and p + TS",
    "MCD": "MC dropout",
    "ENS": "ensemble",
}
METRICS = ("acc", "ece")
# Paired per-seed differences (head, baseline): introspection against the feed-forward network
# and the controls (on h, and on [h, p]), untempered and tempered.
DIFFS = (
    ("INT", "FF"),
    ("INT", "CTL"),
    ("INT", "CTL(h,p)"),
    ("INT+TS", "FF+TS"),
    ("INT+TS", "CTL+TS"),
    ("INT+TS", "CTL(h,p)+TS"),
)


@dataclass
class Group:
    """Runs of one experiment that differ only by seed."""

    label: str
    runs: list[FinishedRun] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any]:
        """The config of the first run (all members agree up to the ignored keys)."""
        return self.runs[0].config


def group_runs(runs: Sequence[FinishedRun]) -> list[Group]:
    """Runs grouped by experiment (config up to seed and bookkeeping), in first-seen order.

    Raises ``CompareError`` when one group holds a seed twice or members were evaluated on
    different splits (their means would not be comparable).
    """
    groups: dict[str, Group] = {}
    for run in runs:
        key = experiment_key(run.config)
        groups.setdefault(key, Group(describe(run.config))).runs.append(run)
    by_label: dict[str, list[Group]] = {}
    for group in groups.values():
        by_label.setdefault(group.label, []).append(group)
    for same in by_label.values():  # same backbone and recipe, other options: name them
        if len(same) > 1:
            keys = differing_keys([g.config for g in same])
            for g in same:
                leaves = leaf_paths(identity(g.config))
                g.label += " (" + ", ".join(f"{k}={leaves.get(k)}" for k in keys) + ")"
    for group in groups.values():
        if any(r.record == MODIFIED for r in group.runs):
            group.label += f" ({MODIFIED})"
        seeds = [r.seed for r in group.runs]
        if len(set(seeds)) != len(seeds):
            paths = [str(r.path) for r in group.runs]
            raise CompareError(
                f"runs {paths} are the same experiment with repeated seeds {seeds}; give each "
                "seed once"
            )
        names = [sorted(r.results["splits"]) for r in group.runs]
        if any(n != names[0] for n in names):
            raise CompareError(
                f"runs of {group.label!r} were evaluated on different splits; re-evaluate them "
                "on the same ones (python evaluate.py run=...) before comparing"
            )
    return list(groups.values())


def _scopes(run: FinishedRun) -> dict[str, dict[str, Any]]:
    """Per-head metrics of each scope: ``clean``, ``corrupted`` (mean of cells) and extras."""
    res = run.results
    out: dict[str, dict[str, Any]] = {}
    if "clean" in res["splits"]:
        out["clean"] = res["splits"]["clean"]
    if res.get("summary"):
        out["corrupted"] = res["summary"]
    for name, entry in res["splits"].items():
        if name != "clean" and not is_cell(name):
            out[name] = entry
    return out


def group_table(group: Group) -> dict[str, tuple[float, float]]:
    """``{"<scope>/<head>/<metric>": (mean, std)}`` over the group's seeds (heads by their short
    names: ``FF``, ``FF+TS``, ``INT``, …), plus the paired differences of ``DIFFS``, e.g.
    ``<scope>/INT-FF/<metric>`` and ``<scope>/INT+TS-CTL+TS/<metric>``."""
    per_run: list[dict[str, float]] = []
    for run in group.runs:
        flat: dict[str, float] = {}
        for scope, entry in _scopes(run).items():
            for head in HEADS:
                if head in entry:
                    for m in METRICS:
                        flat[f"{scope}/{SHORT[head]}/{m}"] = float(entry[head][m])
            for m in METRICS:
                for head, other in DIFFS:
                    value, base = flat.get(f"{scope}/{head}/{m}"), flat.get(f"{scope}/{other}/{m}")
                    if value is not None and base is not None:
                        flat[f"{scope}/{head}-{other}/{m}"] = value - base
        per_run.append(flat)
    keys = [k for k in per_run[0] if all(k in r for r in per_run)]
    return {k: mean_std([r[k] for r in per_run]) for k in keys}


Intervals = dict[str, PairedDifference]


def _predictions(run: FinishedRun) -> dict[str, dict[str, Any]] | None:
    """The per-image records of ``run`` when its (checked) record seals them, else None."""
    if not seals_beside(run.results, PREDICTIONS):
        return None
    try:
        return read_predictions(run.path / PREDICTIONS)
    except PredictionsError as err:
        raise CompareError(str(err)) from None


def group_intervals(group: Group) -> tuple[Intervals, list[str]]:
    """``({"<scope>/<head>-<baseline>/<acc|ece>": PairedDifference}, notes)``: the accuracy and
    ECE differences of every pair of ``DIFFS`` with their hierarchical paired bootstrap
    intervals (seeds, then images; corrupted cells pooled, stratified by cell; ECE where every
    run recorded the heads' confidences), for each scope (``clean``, ``corrupted``) in which
    every run of the group sealed ``predictions.npz`` with the same labels. ``notes`` say why a
    group has none."""
    records = [_predictions(run) for run in group.runs]
    if any(r is None for r in records):
        return {}, []
    per_run = [scopes(r) for r in records if r is not None]
    intervals: Intervals = {}
    notes: list[str] = []
    for scope, (first, strata) in per_run[0].items():
        same = all(
            scope in p
            and np.array_equal(p[scope][0][LABELS], first[LABELS])
            and np.array_equal(p[scope][1], strata)
            for p in per_run
        )
        if not same:
            notes.append(
                f"Note: the runs of {group.label!r} were scored on different {scope} images "
                "(labels differ): no confidence intervals for that scope."
            )
            continue
        heads = [h for h in first if h != LABELS and all(h in p[scope][0] for p in per_run)]
        stacked = {h: np.stack([p[scope][0][h] for p in per_run]) for h in heads}
        for (head, base), diff in pair_differences(stacked, strata).items():
            intervals[f"{scope}/{SHORT[head]}-{SHORT[base]}/acc"] = diff
        for (head, base), diff in ece_differences(stacked, strata).items():
            intervals[f"{scope}/{SHORT[head]}-{SHORT[base]}/ece"] = diff
    return intervals, notes


def _ci(diff: PairedDifference | None) -> str:
    """E.g. ``+0.41 [-0.12, +0.95] no detectable difference`` (points), or ``—``."""
    return "—" if diff is None else f"{diff.format()} {diff.verdict}"


def _ci_keys(tables: Sequence[dict[str, tuple[float, float]]], scope: str) -> list[str]:
    """The accuracy and ECE differences of ``scope`` that get an interval column."""
    if scope not in ("clean", "corrupted"):
        return []
    keys = [f"{scope}/{a}-{b}/{m}" for m in METRICS for a, b in DIFFS]
    return [k for k in keys if any(k in t for t in tables)]


def _pct(stat: tuple[float, float] | None, n: int, signed: bool = False) -> str:
    if stat is None:
        return "–"
    mean, std = stat
    text = f"{100 * mean:+.2f}" if signed else f"{100 * mean:.2f}"
    return f"{text} ± {100 * std:.2f}" if n > 1 else text


def _columns(tables: list[dict[str, tuple[float, float]]], scope: str) -> list[str]:
    keys = [f"{scope}/{SHORT[h]}/{m}" for m in METRICS for h in HEADS]
    keys += [f"{scope}/{a}-{b}/{m}" for m in METRICS for a, b in DIFFS]
    return [k for k in keys if any(k in t for t in tables)]


_TITLES = {
    "clean": "Clean test split",
    "corrupted": "Mean over the <corruption>/<severity> cells (the benchmark number)",
}


def markdown(
    groups: Sequence[Group],
    tables: Sequence[dict[str, tuple[float, float]]],
    intervals: Sequence[Intervals] | None = None,
) -> str:
    """Markdown, one table per scope (clean, mean over corruption cells, each extra split):
    accuracy and ECE of every head and the differences of ``DIFFS`` (INT-FF, INT-CTL...), in %,
    as mean ±
    sample std over seeds; with ``intervals`` (one per group, see :func:`group_intervals`),
    then the 95 % interval and verdict of each accuracy difference (``—`` where there is
    none)."""
    cis = list(intervals) if intervals is not None else [{} for _ in groups]
    scopes: list[str] = []
    for t in tables:
        for key in t:
            scope = key.split("/")[0]
            if scope not in scopes:
                scopes.append(scope)
    order = [s for s in ("clean", "corrupted") if s in scopes]
    order += [s for s in scopes if s not in order]
    lines: list[str] = []
    for scope in order:
        cols = _columns(list(tables), scope)
        ci_cols = _ci_keys(tables, scope) if intervals is not None else []
        names = [
            c.split("/", 1)[1].replace("/", " ").replace("-", "−").replace("ece", "ECE")
            for c in cols
        ]
        names += [
            f"{c.split('/')[1].replace('-', '−')} {c.split('/')[2].replace('ece', 'ECE')} "
            f"{100 * LEVEL:g} % CI"
            for c in ci_cols
        ]
        lines += [
            f"**{_TITLES.get(scope, f'Split {scope}')}**",
            "",
            "| run (backbone · stage-2 recipe) | seeds | " + " | ".join(names) + " |",
            "|---|---:|" + "---:|" * (len(cols) + len(ci_cols)),
        ]
        for group, table, ci in zip(groups, tables, cis, strict=True):
            n = len(group.runs)
            vals = [_pct(table.get(c), n, signed="-" in c.split("/")[1]) for c in cols]
            vals += [_ci(ci.get(c)) for c in ci_cols]
            lines.append(f"| {group.label} | {n} | " + " | ".join(vals) + " |")
        lines.append("")
    cells = sorted({sum(is_cell(s) for s in g.runs[0].results["splits"]) for g in groups})
    lines.append(
        f"Values in %; mean ± sample std over seeds; corruption cells per run: "
        f"{', '.join(map(str, cells))}; INT−FF / INT−CTL / INT−CTL(h,p) are per-seed differences "
        "(CTL: the control on h; CTL(h,p): on h and the softmax output p; accuracy: "
        "higher is better; ECE: lower is better)."
    )
    if intervals is not None and any(ci for ci in cis):
        lines.append(
            f"CI: {100 * LEVEL:g} % paired bootstrap interval of the accuracy or ECE difference "
            "(seeds, then images; corruption cells pooled, stratified by cell; ECE: the mean of "
            "the cells' ECEs, recomputed on every resample) and its verdict."
        )
    return "\n".join(lines) + "\n"


def write_csv(
    path: Path,
    groups: Sequence[Group],
    tables: Sequence[dict[str, tuple[float, float]]],
    intervals: Sequence[Intervals] | None = None,
) -> None:
    """One row per group: identity columns, then ``<key>_mean`` and ``<key>_std`` (fractions);
    with ``intervals``, then ``<key>_ci`` (text: points, interval, verdict; ``—`` where there is
    none), ``<key>_ci_low`` and ``<key>_ci_high`` (fractions) of each accuracy difference."""
    keys: list[str] = []
    for t in tables:
        keys += [k for k in t if k not in keys]
    ci_keys: list[str] = []
    if intervals is not None:
        for scope in ("clean", "corrupted"):
            ci_keys += _ci_keys(tables, scope)
    cis = list(intervals) if intervals is not None else [{} for _ in groups]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["run", "backbone", "checkpoint", "recipe", "n_seeds", "seeds", "runs"]
            + [f"{k}_{s}" for k in keys for s in ("mean", "std")]
            + [f"{k}_{s}" for k in ci_keys for s in ("ci", "ci_low", "ci_high")]
        )
        for group, table, ci in zip(groups, tables, cis, strict=True):
            b = group.config.get("backbone", {})
            ident = [
                group.label,
                b.get("name"),
                b.get("checkpoint") or "",
                recipe(group.config),
                len(group.runs),
                " ".join(str(r.seed) for r in group.runs),
                " ".join(str(r.path) for r in group.runs),
            ]
            values = [f"{table[k][i]:.6f}" if k in table else "" for k in keys for i in (0, 1)]
            for k in ci_keys:
                d = ci.get(k)
                values += [_ci(d)] + (["", ""] if d is None else [f"{d.low:.6f}", f"{d.high:.6f}"])
            writer.writerow(ident + values)


# Marker and fill of every head: tempered twins are the hollow version of their head.
_MARKERS = {
    "FF": ("o", True),
    "FF+TS": ("o", False),
    "INT": ("^", True),
    "INT+TS": ("^", False),
    "CTL": ("s", True),
    "CTL+TS": ("s", False),
    "CTL(h,p)": ("P", True),
    "CTL(h,p)+TS": ("P", False),
    "MCD": ("D", True),
    "ENS": ("*", True),
}


def runs_title(groups: Sequence[Group], limit: int = 4) -> str:
    """The runs a comparison figure shows, by directory name (the first ``limit``)."""
    names = [r.path.name for g in groups for r in g.runs]
    shown = ", ".join(names[:limit]) + (f", … ({len(names)} runs)" if len(names) > limit else "")
    return f"runs {shown}"


def scatter(
    path: Path, groups: Sequence[Group], tables: Sequence[dict[str, tuple[float, float]]]
) -> Figure:
    """Accuracy (y) against ECE (x), in %, for every group and head; clean and mean-corruption
    panels; error bars are the seed std. Ideal: top-left."""
    fig = Figure(figsize=(11, 4.8))
    FigureCanvasAgg(fig)
    colors = [f"C{i % 10}" for i in range(len(groups))]
    for i, scope in enumerate(("clean", "corrupted")):
        ax = fig.add_subplot(1, 2, i + 1)
        for table, color in zip(tables, colors, strict=True):
            for head, (marker, filled) in _MARKERS.items():
                acc, ece = table.get(f"{scope}/{head}/acc"), table.get(f"{scope}/{head}/ece")
                if acc is None or ece is None:
                    continue
                ax.errorbar(
                    100 * ece[0], 100 * acc[0], xerr=100 * ece[1], yerr=100 * acc[1],
                    fmt=marker, color=color, markersize=8, capsize=3,
                    markerfacecolor=color if filled else "none",
                )  # fmt: skip
        ax.set_xlabel("ECE (%)  ← better")
        ax.set_ylabel("accuracy (%)  better →")
        ax.set_title("clean test split" if scope == "clean" else "mean over corruption cells")
        ax.grid(alpha=0.3)
    handles = [
        fig.axes[0].plot([], [], "o", color=c, label=g.label)[0]
        for g, c in zip(groups, colors, strict=True)
    ]
    shown = {k.split("/")[1] for t in tables for k in t}
    handles += [
        fig.axes[0].plot(
            [], [], m, color="grey", markerfacecolor="grey" if filled else "none",
            label=SHORT_NAMES[h],
        )[0]
        for h, (m, filled) in _MARKERS.items()
        if h in shown
    ]  # fmt: skip
    fig.suptitle(f"{runs_title(groups)}: test split, accuracy against ECE (mean ± seed std)")
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
    rows = math.ceil(len(handles) / 2)
    fig.subplots_adjust(bottom=0.1 + 0.04 * rows, wspace=0.25)
    fig.savefig(path, dpi=120)
    return fig


def severity_curves(path: Path, groups: Sequence[Group]) -> Figure | None:
    """Accuracy and ECE (mean over corruptions, ± seed std) against severity, one column per
    group and one line per head (side by side at each severity, so one severity shows every
    head too); returns None (and writes nothing) without severities."""
    with_sev = [g for g in groups if g.runs[0].results.get("by_severity")]
    if not with_sev:
        return None
    fig = Figure(figsize=(max(6.0, 4 * len(with_sev)), 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(with_sev), squeeze=False)
    dodge = 0.6 / len(HEADS)  # the heads side by side within 0.6 of a severity step
    for j, group in enumerate(with_sev):
        severities = sorted(group.runs[0].results["by_severity"], key=int)
        x = np.asarray([int(s) for s in severities], dtype=np.float64)
        for row, metric in enumerate(METRICS):
            ax = axes[row][j]
            for k, head in enumerate(HEADS):
                per_run = [
                    [r.results["by_severity"][s].get(head, {}).get(metric) for s in severities]
                    for r in group.runs
                ]
                if any(v is None for vals in per_run for v in vals):
                    continue
                arr = 100 * np.asarray(per_run, dtype=np.float64)
                std = arr.std(0, ddof=1) if len(arr) > 1 else np.zeros(arr.shape[1])
                marker, filled = _MARKERS[SHORT[head]]
                ax.errorbar(
                    x + (k - (len(HEADS) - 1) / 2) * dodge, arr.mean(0), yerr=std,
                    marker=marker, capsize=3, linestyle="-" if filled else "--",
                    label=SHORT_NAMES[SHORT[head]],
                )  # fmt: skip
            ax.set_xticks(x)
            ax.set_xlim(x[0] - 0.5, x[-1] + 0.5)
            ax.set_xlabel("severity")
            ax.set_ylabel("accuracy (%)" if metric == "acc" else "ECE (%)")
            ax.grid(alpha=0.3)
            if row == 0:
                fit_text(fig, ax.set_title(group.label, fontsize=8), within=ax)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fit_suptitle(fig, f"{runs_title(with_sev)}: corruption cells of the test split, by severity")
    fit_legend(fig, handles, labels, fontsize=7, frameon=False)
    fig.savefig(path, dpi=120)
    return fig


def comparison_dir(out_dir: str | os.PathLike[str] | None, runs: Sequence[Path]) -> Path:
    """``out_dir`` resolved and created; by default ``<common parent of runs>/comparison``."""
    out = (
        Path(out_dir).expanduser().resolve()
        if out_dir
        else Path(os.path.commonpath([str(r.parent) for r in runs])) / "comparison"
    )
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_outputs(
    out: Path,
    text: str,
    groups: Sequence[Group],
    tables: Sequence[dict[str, tuple[float, float]]],
    intervals: Sequence[Intervals],
) -> str:
    """Write ``comparison.md`` (the Table-1 layout first, and alone in ``table1.md``, for runs
    of the Table-1 suite), ``comparison.csv`` and the accuracy-vs-ECE scatter plot; returns
    the text of ``comparison.md``."""
    table1 = table1_markdown(
        [g.label for g in groups],
        [stage1_recipe_of(g.config) for g in groups],
        [len(g.runs) for g in groups],
        tables,
    )
    if table1 is not None:  # runs of the Table-1 suite: that layout first
        (out / "table1.md").write_text(table1)
        text = table1 + "\n" + text
    (out / "comparison.md").write_text(text)
    write_csv(out / "comparison.csv", groups, tables, intervals)
    scatter(out / "accuracy_vs_ece.png", groups, tables)
    return text


def log_comparison(
    out: Path,
    runs: Sequence[FinishedRun],
    groups: Sequence[Group],
    tables: Sequence[dict[str, tuple[float, float]]],
    images: Sequence[Path],
    target: WandbTarget,
) -> None:
    """One W&B run of job type ``compare``, logged to ``target``."""
    import wandb

    keys: list[str] = []
    for t in tables:
        keys += [k for k in t if k not in keys]
    run = wandb.init(
        job_type="compare",
        dir=str(out),
        config={"runs": [str(r.path) for r in runs]},
        **target.init_args(),
    )
    try:
        columns = ["run", "n_seeds"] + [f"{k}_{s}" for k in keys for s in ("mean", "std")]
        data = [
            [g.label, len(g.runs)] + [t[k][i] if k in t else None for k in keys for i in (0, 1)]
            for g, t in zip(groups, tables, strict=True)
        ]
        run.log(
            {
                "compare/table": wandb.Table(columns=columns, data=data),
                **{f"compare/{p.stem}": wandb.Image(str(p)) for p in images},
            }
        )
    finally:
        run.finish()
