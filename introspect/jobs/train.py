"""The main job: config -> data + backbone -> stage 1 (train or load) -> evaluation."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from introspect.jobs.active import ActiveSettings, run_active
from introspect.jobs.job import job_loggers, run_job
from introspect.jobs.quality import QualitySettings, run_quality
from introspect.jobs.settings import TrainSettings, train_settings
from introspect.runs.distributed import barrier, is_global_zero, launch
from introspect.runs.errors import PipelineError
from introspect.runs.rundir import lock_run_dir
from introspect.runs.trainer import build_trainer
from introspect.stages.baselines import ensemble_members, prepare_baselines
from introspect.stages.evaluate import evaluate_and_report
from introspect.stages.heads import check_head_size, load_heads, stage2
from introspect.stages.splits import evaluation_splits
from introspect.stages.stage1 import build_backbone, build_data, stage1


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the job the validated configuration ``cfg`` asks for (``train_settings(cfg).kind``)
    under the run directory's lock and return its results.

    The run directory is locked and checked first (``rundir.lock_run_dir``); rank zero of a
    multi-process run holds the lock from the checks to the end, so a second process is
    refused. ``status.json`` follows the run (``jobs.job``); with ``run.resume=true`` every
    finished stage is reused.
    """
    settings = train_settings(cfg)
    run = settings.job.run
    lock = lock_run_dir(run, settings.job.config)
    try:
        if settings.kind == "two-stage":
            return run_two_stage(settings)
        named = OmegaConf.merge(cfg, {"run": {"name": run.name}})  # a new config, named once
        assert isinstance(named, DictConfig)
        settings_of, job = JOBS[settings.kind]
        return job(settings_of.from_config(named))
    finally:
        if lock is not None:
            lock.release()


def run_two_stage(settings: TrainSettings) -> dict[str, Any]:
    """The two-stage job: data, evaluation splits and backbone are built and checked before any
    training, then stage 1 (train or load), stage 2 (the heads) and the evaluation, every
    process of a multi-process run computing each stage and returning the same results."""
    start = time.perf_counter()
    s1, trainer_settings = settings.stage1, settings.job.trainer
    L.seed_everything(s1.seed, workers=True, verbose=False)
    dm = build_data(s1)
    splits = evaluation_splits(settings.eval, s1.data, dm, settings.device)  # checked first
    backbone = build_backbone(s1, dm.num_classes, dm.image_shape)
    if settings.stage2_enabled:
        check_head_size(backbone, settings.stage2.head, settings.stage2.features)
    launch(trainer_settings, settings.job.run)  # after the checks: bad settings fail first
    with run_job(settings.job, started=start) as job:
        run_dir, loggers = job.run_dir, job.loggers
        assert job.settings is not None
        settings = settings.placed(job.settings)
        with job.stage("stage1"):
            stage1(s1, dm, backbone, run_dir, loggers)
            frozen_memory_format(backbone, channels_last=trainer_settings.channels_last)
        with job.stage("stage2"):
            heads = {}
            if settings.stage2_enabled:
                trainer = partial(build_trainer, trainer_settings, run_dir, loggers=loggers)
                device = torch.device(settings.device)
                heads = stage2(settings.stage2, dm, backbone, run_dir, trainer, device)
        with job.stage("evaluation"):
            baselines = _baselines(settings, dm, backbone, heads, run_dir, train=True)
            results = evaluate_and_report(
                settings.report,
                dm,
                backbone,
                heads,
                splits,
                run_dir,
                loggers,
                partial(build_trainer, trainer_settings, run_dir),
                started=start,
                baselines=baselines,
            )
    return results


# The other jobs ``run`` starts, by ``TrainSettings.kind``: each one's settings (built from the
# configuration) and the job that takes them.
JOBS: dict[str, tuple[Any, Callable[[Any], dict[str, Any]]]] = {
    "active": (ActiveSettings, run_active),
    "quality": (QualitySettings, run_quality),
}


def _baselines(
    settings: TrainSettings,
    dm: Any,
    backbone: nn.Module,
    heads: dict,
    run_dir: Path,
    *,
    train: bool,
) -> Any:
    """The run's calibration baselines (temperatures, MC dropout, ensemble; members trained
    here with ``train``, else loaded)."""
    return prepare_baselines(
        settings.calibration(run_dir),
        dm,
        backbone,
        heads,
        mc_dropout=settings.mc_dropout,
        ensemble=partial(ensemble_members, settings.stage1, dm, run_dir, train=train),
        device=settings.device,
    )


def frozen_memory_format(backbone: nn.Module, *, channels_last: bool) -> None:
    """Hold the frozen stage-1 network's weights in channels-last memory format when
    ``channels_last``: its convolutions (feature extraction, evaluation) then run in that format
    on CPU and GPU, with values equal to the default format's up to float rounding."""
    if channels_last:
        backbone.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def reevaluate(
    settings: TrainSettings,
    run_dir: Path,
    out_dir: Path,
    *,
    note: str | None = None,
) -> dict[str, Any]:
    """Reload a finished run's backbone and heads, evaluate them again on ``settings.eval`` and
    write the results to ``out_dir`` (e.g. ``<run>/evaluations/<tag>``; the run's own
    ``results.json`` is never touched). An interrupted re-evaluation into the same
    ``out_dir`` continues where it stopped. ``note`` (e.g. that the run's own record was
    modified) goes under the table."""

    if settings.kind == "quality":
        raise PipelineError(
            f"{run_dir} is a quality run: its results.json and table.md are its evaluation; "
            "draw its Contrast-CAMs with evaluate.py explain run=... figure=quality"
        )
    start = time.perf_counter()
    dm = build_data(settings.stage1)
    splits = evaluation_splits(settings.eval, settings.stage1.data, dm, settings.device)
    settings = settings.of_finished_run(run_dir)
    trainer_settings = settings.job.trainer
    backbone = build_backbone(settings.stage1, dm.num_classes, dm.image_shape).eval()
    frozen_memory_format(backbone, channels_last=trainer_settings.channels_last)
    heads = load_heads(
        backbone,
        run_dir,
        dm.num_classes,
        head=settings.stage2.head,
        features=settings.stage2.features,
    )
    launch(trainer_settings, settings.job.run)
    if is_global_zero():
        out_dir.mkdir(parents=True, exist_ok=True)
    barrier()
    baselines = _baselines(settings, dm, backbone, heads, run_dir, train=False)
    loggers = job_loggers(settings.job, out_dir)
    results = evaluate_and_report(
        settings.report,
        dm,
        backbone,
        heads,
        splits,
        out_dir,
        loggers,
        partial(build_trainer, trainer_settings, out_dir),
        started=start,
        extra_run_info={"evaluation_of": str(run_dir)} | ({"note": note} if note else {}),
        baselines=baselines,
        run_dir=run_dir,
        note=note,
    )
    for logger in loggers:
        logger.finalize("success")
    return results
