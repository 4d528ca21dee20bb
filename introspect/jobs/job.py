"""The bookkeeping every job shares: its run directory (created or continued), ``status.json``
(``running`` with the stage under way, each finished stage with its seconds, then ``complete``,
``failed`` or ``interrupted``), its loggers, and how a run that fails from outside (a full disk,
Ctrl-C) is recorded and reported. Jobs write their own results; ``Job`` does the rest.
``job_settings`` builds what it takes from a validated configuration."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from introspect.config.schema import Config, LoggerConfig, TrainerConfig
from introspect.runs.errors import PipelineError
from introspect.runs.faults import disk_full, interrupted, resume_hint
from introspect.runs.options import RunOptions
from introspect.runs.rundir import build_loggers, log_version, prepare_run_dir
from introspect.runs.status import mark_stage_done, now, update_status

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger


@dataclass(frozen=True)
class JobSettings:
    """What every job's bookkeeping takes: the run's options, the plain resolved configuration
    (``config.yaml``, W&B, records), the trainer and the logger settings."""

    run: RunOptions
    config: dict[str, Any]
    trainer: TrainerConfig
    logger: LoggerConfig

    def placed(self, run: RunOptions, config: dict[str, Any]) -> JobSettings:
        """These settings for the run as placed (``rundir.prepare_run_dir``'s results)."""
        return replace(self, run=run, config=config)


def _plain(section: Any) -> dict[str, Any]:
    out = OmegaConf.to_container(section, resolve=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]


def job_settings(cfg: DictConfig) -> JobSettings:
    """The bookkeeping settings of the validated configuration ``cfg``; a run without a name
    is named here, once (``RunOptions.named``)."""
    whole = OmegaConf.to_object(cfg)  # the schema's typed record
    assert isinstance(whole, Config), "a configuration composed by config.load_config"
    r = whole.run
    run = RunOptions(
        name=r.name,
        dir=r.dir,
        root=r.root,
        seed=r.seed,
        overwrite=bool(r.overwrite),
        resume=bool(r.resume),
        experiment=whole.experiment,
    ).named()
    return JobSettings(run=run, config=_plain(cfg), trainer=whole.trainer, logger=whole.logger)


class Job:
    """A running job in ``run_dir``: ``stage(name)`` follows its stages in ``status.json``
    (only when ``write``: rank zero of a multi-process run) and keeps their seconds in
    ``stage_seconds``; ``seconds`` is the wall time since ``started`` (``time.perf_counter``);
    ``settings`` are the job's settings as placed (run named, its directory filled in)."""

    def __init__(
        self,
        run_dir: Path,
        *,
        write: bool = True,
        started: float | None = None,
        loggers: list[Logger] | None = None,
        settings: JobSettings | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.settings = settings
        self.write = write
        self.started = time.perf_counter() if started is None else started
        self.loggers: list[Logger] = loggers or []
        self.stage_seconds: dict[str, float] = {}

    @property
    def seconds(self) -> float:
        """Seconds since the job started (rounded to 10 ms)."""
        return round(time.perf_counter() - self.started, 2)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Mark ``name`` as the stage under way; when its block ends without an error, record
        it as done with its seconds (``stage_seconds`` in ``status.json``)."""
        if self.write:
            update_status(self.run_dir, stage=name)
        clock = time.perf_counter()
        yield
        seconds = round(time.perf_counter() - clock, 3)
        self.stage_seconds[name] = seconds
        if self.write:
            mark_stage_done(self.run_dir, name, seconds=seconds)

    def complete(self) -> None:
        """Finalize the loggers and mark the run ``complete`` with its wall time."""
        for logger in self.loggers:
            logger.finalize("success")
        if self.write:
            update_status(
                self.run_dir, state="complete", stage=None, finished=now(), seconds=self.seconds
            )

    def fail(self, err: BaseException, full: str | None) -> None:
        """Record in ``status.json`` how the run ended: ``interrupted`` (SIGINT) or ``failed``
        with the error (ENOSPC with the path ``full`` for a full disk). Nothing when even that
        cannot be written (the disk is full): the entry point's message says it."""
        if not self.write:
            return
        if interrupted(err):
            fields = {"state": "interrupted", "error": "interrupted (SIGINT)"}
        elif full is not None:
            fields = {"state": "failed", "error": f"ENOSPC: no space left on device writing {full}"}
        else:
            fields = {"state": "failed", "error": describe_error(err)}
        try:
            update_status(self.run_dir, **fields, failed=now())
        except OSError:
            pass


def describe_error(err: BaseException) -> str:
    """``Type: message`` of ``err`` on one line (the type alone for an empty message)."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


@contextmanager
def run_job(
    settings: JobSettings, *, started: float | None = None, loggers: bool = True
) -> Iterator[Job]:
    """Create (or continue) the run directory of ``settings`` and run the block as its job: the run
    is ``complete`` when the block ends, ``failed``/``interrupted`` when it raises. A full disk
    becomes a ``PipelineError`` saying how to continue. With ``loggers``, the job holds the
    run's loggers (``rundir.build_loggers``; resumed runs log under ``resume-K``)."""
    from introspect.runs.distributed import is_global_zero

    settings = settings.placed(*prepare_run_dir(settings.run, settings.config))
    run_dir = Path(str(settings.run.dir))
    job = Job(run_dir, write=is_global_zero(), started=started, settings=settings)
    try:
        if loggers:
            version = log_version(run_dir, resume=settings.run.resume)
            job.loggers = job_loggers(settings, run_dir, csv_version=version)
        yield job
    except BaseException as err:
        full = disk_full(err, run_dir)
        job.fail(err, full)
        if full is not None:
            raise PipelineError(
                f"no space left on device while writing {full}; free space and continue with "
                f"{run_resume_hint(settings.run)}"
            ) from err
        raise
    job.complete()


def job_loggers(settings: JobSettings, run_dir: Path, *, csv_version: str = "") -> list[Logger]:
    """The loggers ``settings.logger`` asks for, writing under ``run_dir``
    (``rundir.build_loggers``; W&B gets the run's name and resolved config)."""
    return build_loggers(
        settings.logger,
        run_dir,
        name=str(settings.run.name),
        config=settings.config,
        csv_version=csv_version,
    )


def run_resume_hint(run: RunOptions) -> str:
    """The settings that continue the run ``run`` (``faults.resume_hint``)."""
    return resume_hint(run.name, run.dir, run.root)
