"""The main job: config -> data + backbone -> stage 1 (train or load) -> evaluation."""

from __future__ import annotations

import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from torch import nn

from introspect.backbones import (
    BackboneError,
    CheckpointError,
    HeadNotFoundError,
)
from introspect.config import ConfigError
from introspect.data import DataError
from introspect.jobs.active import ActiveError, run_active
from introspect.jobs.quality import run_quality
from introspect.jobs.settings import (
    calibration_plan,
    feature_options,
    head_recipe,
    mc_dropout,
    report_options,
    stage2_settings,
)
from introspect.quality import QualityDataError
from introspect.runs.distributed import (
    barrier,
    is_global_zero,
    launch,
)
from introspect.runs.errors import PipelineError
from introspect.runs.faults import disk_full, interrupted, resume_hint
from introspect.runs.lock import LockError
from introspect.runs.rundir import (
    build_loggers,
    lock_run_dir,
    log_version,
    prepare_run_dir,
)
from introspect.runs.status import mark_stage_done, now, update_status
from introspect.runs.trainer import build_trainer, resolve_device
from introspect.stages.baselines import ensemble_members, prepare_baselines
from introspect.stages.evaluate import evaluate_and_report
from introspect.stages.heads import check_head_size, load_heads, stage2
from introspect.stages.splits import evaluation_splits
from introspect.stages.stage1 import build_backbone, build_data, stage1, stage1_checkpoint

# Errors caused by what the user asked for: entry points print their message, not a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (
    PipelineError,
    ActiveError,
    DataError,
    BackboneError,
    CheckpointError,
    HeadNotFoundError,
    ConfigError,
    QualityDataError,
    LockError,
)


def quiet_library_warnings() -> None:
    """Hide warnings that concern library internals, not the user's run (for entry points)."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the configured job end to end (stage 1, stage 2, evaluation) and return the results.

    The run directory is locked and checked first (``rundir.lock_run_dir``), then data,
    evaluation splits and backbone are built and checked before any training. ``status.json``
    follows the run (``running`` with its stage, ``failed`` with the error, ``complete``); with
    ``run.resume=true`` every finished stage is reused. With several processes
    (``trainer.devices``/``trainer.num_nodes``) every stage runs on all of them and each
    returns the same results; rank zero writes the run directory and holds its lock from the
    checks to the end, so a second process is refused.
    """
    lock = lock_run_dir(cfg)
    try:
        return _run(cfg)
    finally:
        if lock is not None:
            lock.release()


def _run(cfg: DictConfig) -> dict[str, Any]:
    """``run`` under the run directory's lock (its checks made)."""
    if cfg.task == "quality":
        return run_quality(cfg)

    if cfg.active.enabled:
        return run_active(cfg)
    start = time.perf_counter()
    L.seed_everything(cfg.run.seed, workers=True, verbose=False)
    dm = build_data(cfg)
    splits = evaluation_splits(cfg, dm, resolve_device(cfg))  # checked before any work
    backbone = build_backbone(cfg, dm.num_classes, dm.image_shape)
    if cfg.stage2.enabled:
        check_head_size(backbone, head_recipe(cfg), feature_options(cfg))
    launch(cfg)  # after the checks above: a bad configuration fails before processes start
    run_dir = prepare_run_dir(cfg)
    zero = is_global_zero()
    try:
        loggers = build_loggers(cfg, run_dir, csv_version=log_version(cfg, run_dir))
        if zero:
            update_status(run_dir, stage="stage1")
        stage1(cfg, dm, backbone, run_dir, loggers)
        frozen_memory_format(backbone, channels_last=cfg.trainer.channels_last)
        if zero:
            mark_stage_done(run_dir, "stage1")
            update_status(run_dir, stage="stage2")
        heads = {}
        if cfg.stage2.enabled:
            trainer = partial(build_trainer, cfg, run_dir, loggers=loggers)
            device = resolve_device(cfg)
            heads = stage2(stage2_settings(cfg), dm, backbone, run_dir, trainer, device)
        if zero:
            mark_stage_done(run_dir, "stage2")
            update_status(run_dir, stage="evaluation")
        baselines = prepare_baselines(
            calibration_plan(cfg, run_dir),
            dm,
            backbone,
            heads,
            mc_dropout=mc_dropout(cfg),
            ensemble=partial(ensemble_members, cfg, dm, run_dir, train=True),
            device=resolve_device(cfg),
        )
        results = evaluate_and_report(
            report_options(cfg), dm, backbone, heads, splits, run_dir, loggers,
            partial(build_trainer, cfg, run_dir), started=start, baselines=baselines,
        )  # fmt: skip
        for logger in loggers:
            logger.finalize("success")
    except BaseException as err:
        full = disk_full(err, run_dir)
        if zero:
            _record_failure(run_dir, err, full)
        if full is not None:
            raise PipelineError(
                f"no space left on device while writing {full}; free space and continue with "
                f"{resume_hint(cfg)}"
            ) from err
        raise
    if zero:
        mark_stage_done(run_dir, "evaluation")
        update_status(
            run_dir,
            state="complete",
            stage=None,
            finished=now(),
            seconds=results["run"].get("seconds"),
        )
    return results


def frozen_memory_format(backbone: nn.Module, *, channels_last: bool) -> None:
    """Hold the frozen stage-1 network's weights in channels-last memory format when
    ``channels_last``: its convolutions (feature extraction, evaluation) then run in that format
    on CPU and GPU, with values equal to the default format's up to float rounding."""
    if channels_last:
        backbone.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def _describe_error(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _record_failure(run_dir: Path, err: BaseException, full: str | None) -> None:
    """Record in ``status.json`` how the run ended: ``interrupted`` (SIGINT) or ``failed`` with
    the error (ENOSPC with the path for a full disk). Nothing when even that cannot be
    written (the disk is full): the entry point's message says it."""
    if interrupted(err):
        fields = {"state": "interrupted", "error": "interrupted (SIGINT)"}
    elif full is not None:
        fields = {"state": "failed", "error": f"ENOSPC: no space left on device writing {full}"}
    else:
        fields = {"state": "failed", "error": _describe_error(err)}
    try:
        update_status(run_dir, **fields, failed=now())
    except OSError:
        pass


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
    checkpoint = stage1_checkpoint(cfg, run_dir)
    if checkpoint is None:
        raise PipelineError(f"{run_dir} holds no stage-1 checkpoint; was the run finished?")
    cfg.backbone.checkpoint = checkpoint
    backbone = build_backbone(cfg, dm.num_classes, dm.image_shape).eval()
    frozen_memory_format(backbone, channels_last=cfg.trainer.channels_last)
    heads = load_heads(
        backbone, run_dir, dm.num_classes, head=head_recipe(cfg), features=feature_options(cfg)
    )
    launch(cfg)
    if is_global_zero():
        out_dir.mkdir(parents=True, exist_ok=True)
    barrier()
    baselines = prepare_baselines(
        calibration_plan(cfg, run_dir),
        dm,
        backbone,
        heads,
        mc_dropout=mc_dropout(cfg),
        ensemble=partial(ensemble_members, cfg, dm, run_dir, train=False),
        device=resolve_device(cfg),
    )
    loggers = build_loggers(cfg, out_dir)
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
