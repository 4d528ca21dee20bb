"""Evaluate finished runs.

python evaluate.py run=runs/<name> [a.b=value ...]
    Reload a run's backbone and stage-2 heads, evaluate them on the configured splits
    (override e.g. eval.corruptions=[fog,snow] eval.severities=[5]) and rewrite
    results.json and table.md in the run directory.

python evaluate.py compare RUN [RUN ...] [--out DIR] [--wandb | --no-wandb]
    One table across runs (runs differing only in run.seed are pooled into mean ± std):
    clean and mean-corruption accuracy and ECE of the feed-forward, introspective and
    control heads and their differences, as comparison.md and comparison.csv, plus
    accuracy_vs_ece.png and severity_curves.png, written to DIR (default: a folder
    "comparison" beside the runs) and logged to W&B (default: when the runs were).

python evaluate.py scores run=runs/<name> [a.b=value ...]
    OOD detection and trust of every confidence score (MSP, ODIN, energy, Mahalanobis,
    GradNorm, GradTrust, Purview, ... and the introspective head's int_msp/int_odin).
    In-distribution = the run's clean test split; OOD sets are scores.ood.<name>.{source,
    path,test_path,split} (any classes, resized) plus uniform noise (scores.noise); trust
    (AUAC/AUFC) is measured on the clean split, every eval.extra split and the pooled
    corruption cells. Adds "ood" and "trust" to results.json, writes scores.md. E.g.
    scores.ood.mnist.source=npz scores.ood.mnist.path=mnist.npz scores.ood.mnist.split=all
    scores.max_samples=1000 scores.purview=false
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from introspect.config import ConfigError, load_run_config


def _load_run(argv: list[str]) -> tuple[DictConfig, Path] | None:
    """The saved config (with ``a.b=value`` overrides) and directory of ``run=DIR``; None after
    printing the error."""
    runs = [a.partition("=")[2] for a in argv if a.startswith("run=")]
    if len(runs) != 1:
        print("error: give exactly one run=runs/<name>", file=sys.stderr)
        return None
    run_dir = Path(runs[0]).expanduser().resolve()
    try:
        cfg = load_run_config(run_dir, [a for a in argv if not a.startswith("run=")])
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return None
    return cfg, run_dir


def _run_job(argv: list[str], job: Callable[[DictConfig, Path], Any]) -> Path | None:
    """Load ``run=DIR`` and run ``job(cfg, run_dir)``; user errors are printed, giving None."""
    loaded = _load_run(argv)
    if loaded is None:
        return None
    from introspect.runs.distributed import report_stopped_process
    from introspect.runs.pipeline import USER_ERRORS, quiet_library_warnings

    quiet_library_warnings()
    try:
        job(*loaded)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return None
    except Exception as err:
        if not report_stopped_process(err):  # another process of a multi-process run stopped
            raise
        return None
    return loaded[1]


def reevaluate_main(argv: list[str]) -> int:
    """Parse ``run=DIR`` and overrides, re-evaluate, print the table."""
    from introspect.runs.distributed import is_global_zero
    from introspect.runs.pipeline import reevaluate

    run_dir = _run_job(argv, reevaluate)
    if run_dir is None:
        return 2
    if is_global_zero():
        print(f"rewrote {run_dir / 'results.json'}")
    return 0


def scores_main(argv: list[str]) -> int:
    """Parse ``run=DIR`` and overrides, score the run's OOD detection and trust, print tables."""
    from introspect.runs.scores import score_run

    run_dir = _run_job(argv, score_run)
    if run_dir is None:
        return 2
    print(f"updated {run_dir / 'results.json'}; tables in {run_dir / 'scores.md'}")
    return 0


def compare_main(argv: list[str]) -> int:
    """Parse run directories and ``--out``/``--wandb``, build and print the comparison."""
    from introspect.runs.compare import CompareError, compare

    paths: list[str] = []
    out: str | None = None
    wandb: bool | None = None
    args = iter(argv)
    for arg in args:
        if arg == "--out":
            out = next(args, None)
            if out is None:
                print("error: --out needs a directory", file=sys.stderr)
                return 2
        elif arg in ("--wandb", "--no-wandb"):
            wandb = arg == "--wandb"
        elif arg.startswith("-"):
            print(f"error: unknown option {arg!r}; see python evaluate.py --help", file=sys.stderr)
            return 2
        else:
            paths.append(arg)
    try:
        report = compare(paths, out, wandb=wandb)
    except CompareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report["markdown"])
    print(f"wrote {report['out_dir']}")
    return 0


def main(argv: list[str]) -> int:
    """Dispatch to re-evaluation, ``compare``, ``scores`` or ``explain``."""
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0 if argv else 2
    if argv[0] == "compare":
        return compare_main(argv[1:])
    if argv[0] == "scores":
        return scores_main(argv[1:])
    if argv[0] == "explain":
        from introspect.explain import explain_main

        return explain_main(argv[1:])
    return reevaluate_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
