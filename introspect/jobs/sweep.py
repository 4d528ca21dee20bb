"""Multirun sweeps: ``key=a,b`` overrides expand into their Cartesian product; each job runs in
its own run directory under one sweep directory, launched here one after another or as a SLURM
job array through submitit; the finished jobs are compared into the sweep directory.

The sweep grammar is the common subset of Hydra's: ``key=a,b,c`` (commas inside ``[...]``,
``{...}`` or quotes do not split) and ``key=range(start,stop[,step])``.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from introspect.config import ConfigError, load_config
from introspect.config.launcher import load_launcher
from introspect.config.overrides import OverrideError, split_values
from introspect.jobs.job import job_settings
from introspect.report.experiments import WandbTarget
from introspect.runs.rundir import check_run_dir
from introspect.runs.status import write_json_atomic


class SweepError(ValueError):
    """A sweep that cannot start; the message names the fix."""


@dataclass(frozen=True)
class Job:
    """One point of the sweep: its overrides (the fixed ones first) and run directory."""

    index: int
    overrides: tuple[str, ...]
    varied: tuple[str, ...]
    run_dir: Path

    def argv(self) -> list[str]:
        """The ``train`` arguments of this job."""
        return [*self.overrides, f"run.dir={self.run_dir}"]


@dataclass(frozen=True)
class Sweep:
    """The planned jobs, their launcher and the sweep directory."""

    directory: Path
    jobs: tuple[Job, ...]
    launcher: DictConfig
    argv: tuple[str, ...]
    # Where the comparison of the finished jobs is logged to W&B (None: not logged): from the
    # jobs' composed configs (this command line), when every job logs to W&B.
    wandb: WandbTarget | None = None


def expand(args: Sequence[str]) -> list[tuple[list[str], list[str]]]:
    """Every combination of the sweep overrides in ``args`` (later keys vary fastest), as
    ``(all overrides, the varied ones)``."""
    fixed: list[str] = []
    axes: list[list[str]] = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if arg.startswith("~") and not sep:
            fixed.append(arg)  # a deletion: the same in every job
            continue
        if not sep or not key:
            raise SweepError(f"argument {arg!r} is not of the form key=value (e.g. run.seed=0,1)")
        try:
            values = split_values(value)
        except OverrideError as err:
            raise SweepError(str(err)) from None
        if len(values) == 1:
            fixed.append(arg)
        else:
            axes.append([f"{key}={v}" for v in values])
    return [(fixed + list(combo), list(combo)) for combo in itertools.product(*axes)]


def _slug(overrides: Sequence[str]) -> str:
    text = "_".join(
        f"{k.rpartition('.')[2]}={v}" for k, _, v in (o.partition("=") for o in overrides)
    )
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text)[:80] or "job"


_SWEEP_ONLY = ("launcher", "sweep.dir")


def plan_sweep(argv: Sequence[str], config_dir: Path, *, now: float | None = None) -> Sweep:
    """Split ``argv`` into sweep settings (``launcher=``, ``launcher.*``, ``sweep.dir=``) and
    job overrides, expand the jobs and validate each one's config and run directory before
    anything runs."""
    launcher_choice = "local"
    launcher_args: list[str] = []
    sweep_dir: str | None = None
    job_args: list[str] = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "launcher":
            launcher_choice = value
        elif key.startswith("launcher."):
            launcher_args.append(arg)
        elif key == "sweep.dir":
            sweep_dir = value
        elif key in ("run.dir", "run.name"):
            raise SweepError(
                f"{key} cannot be set in a sweep: every job gets its own directory under the "
                "sweep directory; choose that with sweep.dir=PATH"
            )
        else:
            job_args.append(arg)
    launcher = load_launcher(launcher_choice, launcher_args, config_dir)
    combos = expand(job_args)
    if sweep_dir is None:
        root = load_config(combos[0][0], config_dir=config_dir).run.root
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
        sweep_dir = str(Path(root) / "sweeps" / stamp)
    directory = Path(sweep_dir).expanduser().resolve()
    jobs = []
    loggers = []
    for index, (overrides, varied) in enumerate(combos):
        run_dir = directory / f"{index:03d}_{_slug(varied)}"
        job = Job(index, tuple(overrides), tuple(varied), run_dir)
        try:
            cfg = load_config(job.argv(), config_dir=config_dir)
            settings = job_settings(cfg)
            check_run_dir(settings.run, settings.config)
        except ConfigError as err:
            raise SweepError(f"job {index} ({' '.join(varied) or 'no sweep'}): {err}") from None
        jobs.append(job)
        loggers.append(cfg.logger)
    first = loggers[0]
    target = (
        WandbTarget(first.wandb_mode, first.project, first.entity)
        if all(logger.wandb for logger in loggers)
        else None
    )
    return Sweep(directory, tuple(jobs), launcher, tuple(argv), target)


def _manifest(sweep: Sweep, states: dict[int, Any]) -> dict[str, Any]:
    return {
        "argv": list(sweep.argv),
        "launcher": OmegaConf.to_container(sweep.launcher),
        "jobs": [
            {
                "index": j.index,
                "overrides": list(j.overrides),
                "varied": list(j.varied),
                "run_dir": str(j.run_dir),
                "state": states.get(j.index, "pending"),
            }
            for j in sweep.jobs
        ],
    }


def run_job(argv: Sequence[str]) -> int:
    """Run one job in a fresh Python process (``python -m introspect train ...``)."""
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "introspect", "train", *argv], env=env).returncode


def job_log(sweep: Sweep, job: Job) -> Path:
    """Where a job launched in parallel writes its console output: ``<sweep>/<job dir>.log``."""
    return sweep.directory / f"{job.run_dir.name}.log"


def _launch_local(sweep: Sweep, states: dict[int, Any], record: Path) -> None:
    """Run the jobs as ``launcher.jobs`` processes at a time (each its own run directory and
    lock); one at a time they share this console, in parallel each writes its own log."""
    parallel = int(sweep.launcher.jobs)
    command = [sys.executable, "-m", "introspect", "train"]
    pending = list(sweep.jobs)
    running: dict[int, tuple[subprocess.Popen[bytes], Any]] = {}
    total = len(sweep.jobs)
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            what = " ".join(job.varied) or "(no sweep)"
            if parallel == 1:
                print(f"[sweep] job {job.index + 1}/{total}: {what}", flush=True)
                code = run_job(job.argv())
                states[job.index] = "complete" if code == 0 else f"failed (exit {code})"
                write_json_atomic(record, _manifest(sweep, states))
                continue
            log = job_log(sweep, job).open("wb")
            print(
                f"[sweep] job {job.index + 1}/{total} started: {what} (log: {log.name})", flush=True
            )
            process = subprocess.Popen(
                [*command, *job.argv()], stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ)
            )
            running[job.index] = (process, log)
            states[job.index] = "running"
            write_json_atomic(record, _manifest(sweep, states))
        for index, (process, log) in list(running.items()):
            code = process.poll()
            if code is None:
                continue
            log.close()
            del running[index]
            states[index] = "complete" if code == 0 else f"failed (exit {code})"
            print(f"[sweep] job {index + 1}/{total} {states[index]}", flush=True)
            write_json_atomic(record, _manifest(sweep, states))
        if running:
            time.sleep(0.2)


def slurm_executor(sweep: Sweep) -> Any:
    """A submitit executor for the sweep's SLURM settings, writing under ``<sweep>/.slurm``."""
    try:
        import submitit
    except ImportError:
        raise SweepError("launcher=slurm needs submitit: pip install submitit") from None
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if missing:
        raise SweepError(
            f"launcher=slurm needs SLURM's {' and '.join(missing)} on PATH; run the sweep on a "
            "cluster login node, or use launcher=local"
        )
    la = sweep.launcher
    executor = submitit.AutoExecutor(folder=sweep.directory / ".slurm" / "%j", cluster="slurm")
    params: dict[str, Any] = {
        "timeout_min": la.timeout_min,
        "cpus_per_task": la.cpus_per_task,
        "gpus_per_node": la.gpus_per_node,
        "mem_gb": la.mem_gb,
        "slurm_array_parallelism": la.array_parallelism,
        "name": f"introspect-{sweep.directory.name}",
    }
    if la.partition:
        params["slurm_partition"] = la.partition
    if la.additional_parameters:
        params["slurm_additional_parameters"] = dict(la.additional_parameters)
    if la.setup:
        params["slurm_setup"] = list(la.setup)
    executor.update_parameters(**params)
    return executor


def _job_entry(argv: list[str]) -> None:
    code = run_job(argv)
    if code != 0:
        raise RuntimeError(f"introspect train exited with {code}: {' '.join(argv)}")


def _launch_slurm(sweep: Sweep, states: dict[int, Any], record: Path) -> bool:
    executor = slurm_executor(sweep)
    submitted = executor.map_array(_job_entry, [job.argv() for job in sweep.jobs])
    for job, handle in zip(sweep.jobs, submitted, strict=True):
        states[job.index] = f"submitted (slurm job {handle.job_id})"
    write_json_atomic(record, _manifest(sweep, states))
    print(f"[sweep] submitted {len(submitted)} jobs: {', '.join(h.job_id for h in submitted)}")
    if not sweep.launcher.wait:
        return False
    for job, handle in zip(sweep.jobs, submitted, strict=True):
        try:
            handle.result()
            states[job.index] = "complete"
        except Exception as err:  # a failed array task: recorded, the others still compared
            states[job.index] = f"failed ({type(err).__name__})"
        write_json_atomic(record, _manifest(sweep, states))
    return True


def launch(sweep: Sweep) -> dict[str, Any]:
    """Run (or submit) every job, record their states in ``<sweep>/sweep.json``, and compare the
    completed ones into the sweep directory. Returns the final manifest (plus ``compare``)."""
    sweep.directory.mkdir(parents=True, exist_ok=True)
    record = sweep.directory / "sweep.json"
    states: dict[int, Any] = {}
    write_json_atomic(record, _manifest(sweep, states))
    if sweep.launcher.name == "slurm":
        finished = _launch_slurm(sweep, states, record)
    else:
        _launch_local(sweep, states, record)
        finished = True
    manifest = _manifest(sweep, states)
    manifest["compare"] = None
    done = [j.run_dir for j in sweep.jobs if states.get(j.index) == "complete"]
    if finished and done:
        from introspect.jobs.compare import CompareError, compare

        try:
            manifest["compare"] = compare(
                done, sweep.directory, wandb=sweep.wandb is not None, target=sweep.wandb
            )
        except CompareError as err:
            print(f"[sweep] no comparison: {err}", file=sys.stderr)
    return manifest
