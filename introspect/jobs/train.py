"""The main job: config -> data + backbone -> stage 1 (train or load) -> evaluation."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from torch import nn

from introspect.jobs.active import run_active
from introspect.jobs.job import job_loggers, run_job, with_stage1_checkpoint
from introspect.jobs.quality import run_quality
from introspect.jobs.settings import (
    calibration_plan,
    feature_options,
    head_recipe,
    mc_dropout,
    report_options,
    stage2_settings,
)
from introspect.runs.distributed import barrier, is_global_zero, launch
from introspect.runs.errors import PipelineError
from introspect.runs.rundir import lock_run_dir
from introspect.runs.trainer import build_trainer, resolve_device
from introspect.stages.baselines import ensemble_members, prepare_baselines
from introspect.stages.evaluate import evaluate_and_report
from introspect.stages.heads import check_head_size, load_heads, stage2
from introspect.stages.splits import evaluation_splits
from introspect.stages.stage1 import build_backbone, build_data, stage1


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the job ``cfg`` asks for (``JOBS[job_kind(cfg)]``) under the run directory's lock
    and return its results.

    The run directory is locked and checked first (``rundir.lock_run_dir``); rank zero of a
    multi-process run holds the lock from the checks to the end, so a second process is
    refused. ``status.json`` follows the run (``jobs.job``); with ``run.resume=true`` every
    finished stage is reused.
    """
    lock = lock_run_dir(cfg)
    try:
        return JOBS[job_kind(cfg)](cfg)
    finally:
        if lock is not None:
            lock.release()


def job_kind(cfg: DictConfig) -> str:
    """The job ``cfg`` asks for: ``quality`` (``task: quality``), ``active``
    (``active.enabled``) or ``two-stage`` (the default)."""
    if cfg.task == "quality":
        return "quality"
    return "active" if cfg.active.enabled else "two-stage"


def run_two_stage(cfg: DictConfig) -> dict[str, Any]:
    """The two-stage job: data, evaluation splits and backbone are built and checked before any
    training, then stage 1 (train or load), stage 2 (the heads) and the evaluation, every
    process of a multi-process run computing each stage and returning the same results."""
    start = time.perf_counter()
    L.seed_everything(cfg.run.seed, workers=True, verbose=False)
    dm = build_data(cfg)
    splits = evaluation_splits(cfg, dm, resolve_device(cfg))  # checked before any work
    backbone = build_backbone(cfg, dm.num_classes, dm.image_shape)
    if cfg.stage2.enabled:
        check_head_size(backbone, head_recipe(cfg), feature_options(cfg))
    launch(cfg)  # after the checks above: a bad configuration fails before processes start
    with run_job(cfg, started=start) as job:
        run_dir, loggers = job.run_dir, job.loggers
        with job.stage("stage1"):
            stage1(cfg, dm, backbone, run_dir, loggers)
            frozen_memory_format(backbone, channels_last=cfg.trainer.channels_last)
        with job.stage("stage2"):
            heads = {}
            if cfg.stage2.enabled:
                trainer = partial(build_trainer, cfg, run_dir, loggers=loggers)
                settings = stage2_settings(cfg)
                heads = stage2(settings, dm, backbone, run_dir, trainer, resolve_device(cfg))
        with job.stage("evaluation"):
            baselines = _baselines(cfg, dm, backbone, heads, run_dir, train=True)
            results = evaluate_and_report(
                report_options(cfg),
                dm,
                backbone,
                heads,
                splits,
                run_dir,
                loggers,
                partial(build_trainer, cfg, run_dir),
                started=start,
                baselines=baselines,
            )
    return results


# The jobs ``run`` dispatches to, by ``job_kind``.
JOBS: dict[str, Callable[[DictConfig], dict[str, Any]]] = {
    "two-stage": run_two_stage,
    "active": run_active,
    "quality": run_quality,
}


def _baselines(
    cfg: DictConfig, dm: Any, backbone: nn.Module, heads: dict, run_dir: Path, *, train: bool
) -> Any:
    """The run's calibration baselines (temperatures, MC dropout, ensemble; members trained
    here with ``train``, else loaded)."""
    return prepare_baselines(
        calibration_plan(cfg, run_dir),
        dm,
        backbone,
        heads,
        mc_dropout=mc_dropout(cfg),
        ensemble=partial(ensemble_members, cfg, dm, run_dir, train=train),
        device=resolve_device(cfg),
    )


def frozen_memory_format(backbone: nn.Module, *, channels_last: bool) -> None:
    """Hold the frozen stage-1 network's weights in channels-last memory format when
    ``channels_last``: its convolutions (feature extraction, evaluation) then run in that format
    on CPU and GPU, with values equal to the default format's up to float rounding."""
    if channels_last:
        backbone.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def reevaluate(
    cfg: DictConfig, run_dir: Path, out_dir: Path, *, note: str | None = None
) -> dict[str, Any]:
    """Reload a finished run's backbone and heads, evaluate them again on ``cfg.eval`` and
    write the results to ``out_dir`` (e.g. ``<run>/evaluations/<tag>``; the run's own
    ``results.json`` is never touched). An interrupted re-evaluation into the same
    ``out_dir`` continues where it stopped. ``note`` (e.g. that the run's own record was
    modified) goes under the table."""

    if cfg.task == "quality":
        raise PipelineError(
            f"{run_dir} is a quality run: its results.json and table.md are its evaluation; "
            "draw its Contrast-CAMs with evaluate.py explain run=... figure=quality"
        )
    start = time.perf_counter()
    dm = build_data(cfg)
    splits = evaluation_splits(cfg, dm, resolve_device(cfg))
    cfg = with_stage1_checkpoint(cfg, run_dir)
    backbone = build_backbone(cfg, dm.num_classes, dm.image_shape).eval()
    frozen_memory_format(backbone, channels_last=cfg.trainer.channels_last)
    heads = load_heads(
        backbone, run_dir, dm.num_classes, head=head_recipe(cfg), features=feature_options(cfg)
    )
    launch(cfg)
    if is_global_zero():
        out_dir.mkdir(parents=True, exist_ok=True)
    barrier()
    baselines = _baselines(cfg, dm, backbone, heads, run_dir, train=False)
    loggers = job_loggers(cfg, out_dir)
    results = evaluate_and_report(
        report_options(cfg),
        dm,
        backbone,
        heads,
        splits,
        out_dir,
        loggers,
        partial(build_trainer, cfg, out_dir),
        started=start,
        extra_run_info={"evaluation_of": str(run_dir)} | ({"note": note} if note else {}),
        baselines=baselines,
        run_dir=run_dir,
        note=note,
    )
    for logger in loggers:
        logger.finalize("success")
    return results
