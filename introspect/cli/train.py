"""python -m introspect train [experiment=NAME] [group=option ...] [a.b=value ...]
       python -m introspect train --cfg job [overrides]  print the composed config, run nothing
       python -m introspect train -m key=a,b ['key2=range(0,3)'] [launcher=local launcher.jobs=N]
                                 [launcher=slurm launcher.k=v] [sweep.dir=PATH] [--cfg job]
       python -m introspect --completion bash|zsh         print a shell completion script

Overrides follow Hydra: a.b=value sets a key, +a.b=value adds one that has no value yet (e.g.
+eval.extra.jpeg.source=npz), ++a.b=value adds or sets, ~a.b deletes a mapping entry or resets a
field to its default (~a.b=value: only if it holds that value), ~group drops a group's option.
--cfg (or -c; "--cfg job" and "--cfg all" alike) prints the composed config; with -m, the config
of every job of the sweep. sweep.* and launcher settings apply to -m only and are ignored, with a
note, without it.

Train stage 1 (or load the backbone), extract the introspective features, train stage 2 and the
control, evaluate every head on the clean, shifted and corrupted splits; prints the run
directory. ``train.py`` and ``introspect-train`` are the same command.

Multirun (-m / --multirun): every combination of the comma-separated values runs as its own job
in <sweep.dir>/<n>_<values> (default sweep.dir: runs/sweeps/<date-time>): N at a time as local
processes (launcher=local launcher.jobs=N; default 1, one after another), or as a SLURM job
array through submitit (launcher=slurm; options in configs/launcher/slurm.yaml). Every job's
config is validated before the first starts; the
finished jobs are compared into the sweep directory (comparison.md/.csv and plots).
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from introspect.config import ConfigError, default_config_dir, load_config
from introspect.jobs.job import job_settings
from introspect.runs.rundir import check_run_dir


def usage() -> str:
    """This command's help: usage, then every group, experiment and section."""
    from introspect.config.discovery import describe_configs, first_line

    config_dir = default_config_dir()
    launchers = ", ".join(
        f"{p.stem} ({first_line(p)})" for p in sorted((config_dir / "launcher").glob("*.yaml"))
    )
    return f"{__doc__}\n{describe_configs(config_dir)}\n\nSweep launchers (with -m): {launchers}"


_CFG_FLAGS = ("--cfg", "-c")
_CFG_KINDS = ("job", "all")


def split_cfg_flag(argv: list[str]) -> tuple[bool, list[str]]:
    """Whether ``argv`` asks to print the config (``--cfg``, ``-c``, ``--cfg job|all``,
    ``--cfg=job``), and the remaining arguments; ``ConfigError`` for another kind."""
    show = False
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        flag, eq, kind = arg.partition("=")
        if flag not in _CFG_FLAGS:
            rest.append(arg)
            continue
        show = True
        if not eq:
            following = next(args, None)
            if following is None or "=" in following or following.startswith("-"):
                if following is not None:
                    rest.append(following)
                continue
            kind = following
        if kind not in _CFG_KINDS:
            raise ConfigError(
                f"--cfg {kind}: this command has no {kind!r} config (no Hydra runtime); "
                "write --cfg job (or --cfg) to print the job's config"
            )
    return show, rest


_SWEEP_KEYS = ("sweep.", "launcher")


def drop_sweep_settings(argv: list[str]) -> list[str]:
    """``argv`` without the ``sweep.*`` and ``launcher`` settings, which a single run ignores
    (a note on stderr names them)."""
    ignored = [a for a in argv if a.lstrip("+~").startswith(_SWEEP_KEYS)]
    if ignored:
        print(
            f"note: ignored without -m (sweep settings): {' '.join(ignored)}",
            file=sys.stderr,
        )
    return [a for a in argv if a not in ignored]


def _sweep(argv: list[str], *, show: bool = False) -> int:
    from introspect.jobs.sweep import SweepError, launch, plan_sweep

    try:
        sweep = plan_sweep(argv, default_config_dir())
    except (SweepError, ConfigError) as err:
        print(f"sweep error: {err}", file=sys.stderr)
        return 2
    if show:
        from omegaconf import OmegaConf

        for job in sweep.jobs:
            what = " ".join(job.varied) or "(no sweep)"
            print(f"# job {job.index + 1}/{len(sweep.jobs)}: {what}")
            cfg = load_config(job.argv(), config_dir=default_config_dir())
            print(OmegaConf.to_yaml(cfg), end="")
        return 0
    print(f"[sweep] {len(sweep.jobs)} job(s) in {sweep.directory} ({sweep.launcher.name})")
    manifest = launch(sweep)
    failed = [j for j in manifest["jobs"] if j["state"].startswith("failed")]
    if manifest.get("compare"):
        from introspect.report.console import console_table

        print(console_table(manifest["compare"]["markdown"]))
    for job in failed:
        print(f"[sweep] job {job['index']} {job['state']}: {job['run_dir']}", file=sys.stderr)
    print(f"sweep directory: {sweep.directory}")
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    """Compose the config from ``argv`` and run the job (or the sweep, or print the config)."""
    if any(a in ("-h", "--help") for a in argv):
        print(usage())
        return 0
    try:
        show, argv = split_cfg_flag(argv)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if any(a in ("-m", "--multirun") for a in argv):
        return _sweep([a for a in argv if a not in ("-m", "--multirun")], show=show)
    argv = drop_sweep_settings(argv)
    try:
        cfg = load_config(argv)
        if show:
            print(OmegaConf.to_yaml(cfg), end="")
            return 0
        settings = job_settings(cfg)  # the run named once, for every check and the run itself
        named = OmegaConf.merge(cfg, {"run": {"name": settings.run.name}})
        assert isinstance(named, DictConfig)
        run_dir = check_run_dir(settings.run, settings.config)  # before the heavy imports below
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    from introspect.jobs.errors import exit_code, quiet_library_warnings
    from introspect.jobs.job import run_resume_hint
    from introspect.jobs.train import run
    from introspect.runs.distributed import is_global_zero

    quiet_library_warnings()
    try:
        results = run(named)
    except BaseException as err:  # Ctrl-C too, also as Lightning's SystemExit(1) after it
        hint = run_resume_hint(settings.run.placed(str(settings.run.name), str(run_dir)))
        code = exit_code(
            err,
            out=str(run_dir),
            again=f"free space and continue with {hint}",
            interrupted_line=f"interrupted: the run in {run_dir} stopped; continue it with {hint}",
        )
        if code is None:
            raise
        return code
    if is_global_zero():
        print(f"run directory: {run_dir} ({_timing(run_dir, results['run']['seconds'])})")
    return 0


def _timing(run_dir: Path, recorded: float) -> str:
    """``14.1 s; stage1 1.2 s, stage2 3.4 s, ...``: the run's whole time and each stage's from
    its ``status.json`` (the whole time until the record was written, ``recorded``, without)."""
    from introspect.runs.status import read_status

    status = read_status(run_dir) or {}
    seconds = status.get("stage_seconds", {})
    total = f"{status.get('seconds', recorded):.1f} s"
    if not seconds:
        return total
    return total + "; " + ", ".join(f"{name} {s:.1f} s" for name, s in seconds.items())


def entry() -> None:
    """Console script ``introspect-train``."""
    sys.exit(main(sys.argv[1:]))
