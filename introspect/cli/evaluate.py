"""Evaluate finished runs.

python evaluate.py run=runs/<name> [tag=NAME] [trainer=...] [logger=...] [a.b=value ...]
    Reload a run's backbone and stage-2 heads and evaluate them on the configured splits
    (override e.g. eval.corruptions=[fog,snow] eval.severities=[5]). Results go to
    runs/<name>/evaluations/<tag>/ (results.json, table.md, plots, logs); the tag defaults to
    one derived from the overrides. The run's own results.json is never modified, and an
    existing evaluation is never replaced (pass another tag=).

python evaluate.py compare RUN [RUN ...] [--out DIR] [--wandb | --no-wandb] [--allow-modified]
        [--wandb-mode offline|online|disabled] [--wandb-project NAME] [--wandb-entity NAME]
    One table across runs (runs differing only in run.seed are pooled into mean ± std):
    clean and mean-corruption accuracy and ECE of the feed-forward, introspective and
    control heads and their differences, as comparison.md and comparison.csv, plus
    accuracy_vs_ece.png and severity_curves.png, written to DIR (default: a folder
    "comparison" beside the runs) and, with --wandb, logged to W&B (default: offline, project
    introspect). Where it is logged comes from these options only, never from the runs.
    Runs that are not complete (status.json) are skipped with a message.

python evaluate.py scores run=runs/<name> [tag=NAME] [a.b=value ...]
    OOD detection and trust of every confidence score (MSP, ODIN, energy, Mahalanobis,
    GradNorm, GradTrust, Purview, ... and the introspective head's int_msp/int_odin).
    In-distribution = the run's clean test split; OOD sets are scores.ood.<name>.{source,
    path,test_path,split} (any classes, resized) plus uniform noise (scores.noise); trust
    (AUAC/AUFC) is measured on the clean split, every eval.extra split and the pooled
    corruption cells. Writes results.json ("ood", "trust") and scores.md to
    runs/<name>/evaluations/scores[-<tag>]/. E.g.
    scores.ood.mnist.source=npz scores.ood.mnist.path=mnist.npz scores.ood.mnist.split=all
    scores.max_samples=1000 scores.purview=false

python evaluate.py explain run=runs/<name> [figure=paradigms|methods|introspection|quality]
        [n=8] [index=0] [split=test] [layer=...] [out=FILE]
    Explanation figures: the paradigms (Grad-CAM, Contrast-CAM, Counterfactual-CAM) of the
    first n images, every map method, or "why P, rather than Q?" for every Q of one image;
    for a quality run (task=quality), "why q, rather than q'?" for every q' of
    quality.explain_contrasts.

python evaluate.py explain-eval run=runs/<name> [methods=[gradcam,rise,...]] [n=64]
        [cell=fog/3] [layer=...] [steps=32] [voice=true] [method.rise.masks=500] [tag=NAME]
    Deletion/insertion AUC and seconds per image of every map method, and VOICE IoU/SNR of
    correct and incorrect predictions, on the first n test images (or a corruption cell);
    written to runs/<name>/evaluations/explain[-<tag>]/.

python evaluate.py explain-network run=runs/<name> [n=500] [layer=layer2] [channels=0,1]
    Filters, activations, maximally activating patches, nearest neighbours and t-SNE figures.

A run's results.json carries a digest of its content and of the checkpoints and heads it was
computed from: compare, scores and re-evaluation refuse a record that no longer matches it
(edited by hand, a file swapped) unless --allow-modified is given, and then mark it (modified)
in every table; a record written before digests existed is used, with a note line saying
that it could not be verified.

A run directory is data: settings of its config.yaml that import code (backbone.name=
pkg.mod:Obj, backbone.ensemble_checkpoints[].name) or unpickle (backbone.trust_checkpoint=true)
are refused unless the command line repeats them or --trust-run is given; an interpolation
(${...}) in it is refused, never resolved; its logger section is ignored (the default logger,
or logger=... and logger.*=... of the command line, is used). Group choices trainer=... and
logger=... work as in train.py (e.g. trainer=ddp_cpu).
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from introspect.config import ConfigError, load_run_config


def _load_run(
    argv: list[str], *, trust_run: bool, allow_modified: bool, default_tag: str = ""
) -> tuple[DictConfig, Path, Path, str | None] | None:
    """The saved config (with overrides), directory, output folder and record note of
    ``run=DIR``, checked before any heavy import (``runs.finished.open_finished_run``: the run
    must be finished and its ``results.json`` match its integrity digest unless
    ``allow_modified``); None after printing the error."""
    from introspect.runs.finished import FinishedRunError, open_finished_run
    from introspect.runs.rundir import evaluation_dir, evaluation_tag

    runs = [a.partition("=")[2] for a in argv if a.startswith("run=")]
    tags = [a.partition("=")[2] for a in argv if a.startswith("tag=")]
    if len(runs) != 1 or len(tags) > 1:
        print("error: give exactly one run=runs/<name> (and at most one tag=)", file=sys.stderr)
        return None
    run_dir = Path(runs[0]).expanduser().resolve()
    overrides = [a for a in argv if not a.startswith(("run=", "tag="))]
    try:
        cfg = load_run_config(run_dir, overrides, trust_run=trust_run)
        tag = tags[0] if tags else evaluation_tag(overrides)
        if default_tag:
            tag = default_tag if tag == "default" else f"{default_tag}-{tag}"
        out_dir = evaluation_dir(run_dir, tag)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return None
    try:
        note = open_finished_run(run_dir, allow_modified=allow_modified, required=()).note
    except FinishedRunError as err:
        print(f"error: {err}", file=sys.stderr)
        return None
    if note:
        print(note, file=sys.stderr)
    return cfg, run_dir, out_dir, note


def _run_job(loaded: tuple[DictConfig, Path, Path, str | None], job: str) -> bool:
    """Run the job ``job`` (``reevaluate`` or ``scores``, imported here) on the run of
    ``loaded`` holding the lock of ``out_dir`` (taken before the heavy imports; rank zero
    only); user errors are printed, giving False."""
    from introspect.runs.lock import LockError
    from introspect.runs.rundir import is_secondary_process, lock_evaluation

    _, run_dir, out_dir, _ = loaded
    try:
        lock = None if is_secondary_process() else lock_evaluation(run_dir, out_dir)
    except LockError as err:
        print(f"error: {err}", file=sys.stderr)
        return False
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return False
    from introspect.jobs.errors import exit_code, quiet_library_warnings

    quiet_library_warnings()
    cfg, run_dir, out_dir, note = loaded
    try:
        if job == "scores":
            from introspect.jobs.scores import ScoresSettings, score_run

            score_run(ScoresSettings.from_config(cfg), run_dir, out_dir, note=note)
        else:
            from introspect.jobs.settings import train_settings
            from introspect.jobs.train import reevaluate

            reevaluate(train_settings(cfg), run_dir, out_dir, note=note)
    except Exception as err:
        again = "run the same command again (it continues where it stopped)"
        if exit_code(err, out=out_dir, again=f"free space and {again}", stopped=2) is None:
            raise
        return False
    finally:
        if lock is not None:
            lock.release()
    return True


def reevaluate_main(
    argv: list[str], *, trust_run: bool = False, allow_modified: bool = False
) -> int:
    """Parse ``run=DIR``, ``tag=`` and overrides, re-evaluate, print the table."""
    loaded = _load_run(argv, trust_run=trust_run, allow_modified=allow_modified)
    if loaded is None:
        return 2
    if not _run_job(loaded, "reevaluate"):
        return 2
    from introspect.runs.distributed import is_global_zero

    if is_global_zero():
        print(f"wrote {loaded[2] / 'results.json'}")
    return 0


def scores_main(argv: list[str], *, trust_run: bool = False, allow_modified: bool = False) -> int:
    """Parse ``run=DIR``, ``tag=`` and overrides, score the run's OOD detection and trust."""
    loaded = _load_run(
        argv, trust_run=trust_run, allow_modified=allow_modified, default_tag="scores"
    )
    if loaded is None:
        return 2
    if not _run_job(loaded, "scores"):
        return 2
    print(f"wrote {loaded[2] / 'results.json'}; tables in {loaded[2] / 'scores.md'}")
    return 0


_WANDB_OPTIONS = {"--wandb-mode": "mode", "--wandb-project": "project", "--wandb-entity": "entity"}
_WANDB_MODES = ("offline", "online", "disabled")


def compare_main(argv: list[str], *, allow_modified: bool = False) -> int:
    """Parse run directories, ``--out`` and the W&B options, build and print the comparison."""
    from introspect.report.experiments import WandbTarget

    paths: list[str] = []
    out: str | None = None
    wandb = False
    target: dict[str, str] = {}
    args = iter(argv)
    for arg in args:
        if arg in ("--out", *_WANDB_OPTIONS):
            value = next(args, None)
            if value is None:
                print(f"error: {arg} needs a value", file=sys.stderr)
                return 2
            if arg == "--out":
                out = value
            else:
                target[_WANDB_OPTIONS[arg]] = value
        elif arg in ("--wandb", "--no-wandb"):
            wandb = arg == "--wandb"
        elif arg.startswith("-"):
            print(f"error: unknown option {arg!r}; see python evaluate.py --help", file=sys.stderr)
            return 2
        else:
            paths.append(arg)
    if target.get("mode", "offline") not in _WANDB_MODES:
        print(
            f"error: --wandb-mode {target['mode']!r} is not one of {', '.join(_WANDB_MODES)}",
            file=sys.stderr,
        )
        return 2
    if not paths:
        print("error: give at least one run directory to compare", file=sys.stderr)
        return 2
    missing = [p for p in paths if not Path(p).expanduser().is_dir()]
    if missing:  # before the imports below
        print(f"error: {missing[0]} is not a run directory", file=sys.stderr)
        return 2
    from introspect.jobs.compare import CompareError, compare
    from introspect.report.console import console_table

    try:
        report = compare(
            paths, out, wandb=wandb, target=WandbTarget(**target), allow_modified=allow_modified
        )
    except CompareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(console_table(report["markdown"]))
    print(f"wrote {report['out_dir']}")
    return 0


EXPLAIN_COMMANDS = {
    "explain": "explain_main",
    "explain-eval": "explain_eval_main",
    "explain-network": "explain_network_main",
}


def main(argv: list[str]) -> int:
    """Dispatch to re-evaluation, ``compare``, ``scores`` or the ``explain`` commands."""
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0 if argv else 2
    trust_run = "--trust-run" in argv
    allow_modified = "--allow-modified" in argv
    argv = [a for a in argv if a not in ("--trust-run", "--allow-modified")]
    if argv[0] == "compare":
        return compare_main(argv[1:], allow_modified=allow_modified)
    if argv[0] == "scores":
        return scores_main(argv[1:], trust_run=trust_run, allow_modified=allow_modified)
    if argv[0] in EXPLAIN_COMMANDS:
        from introspect.cli import explain

        command = getattr(explain, EXPLAIN_COMMANDS[argv[0]])
        return command(argv[1:], trust_run=trust_run)
    return reevaluate_main(argv, trust_run=trust_run, allow_modified=allow_modified)


def entry() -> None:
    """Console script ``introspect-evaluate``."""
    sys.exit(main(sys.argv[1:]))
