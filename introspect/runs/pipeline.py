"""The main job: config -> data + backbone -> stage 1 (train or load) -> evaluation."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from introspect.backbones import (
    Backbone,
    BackboneError,
    CheckpointError,
    HeadNotFoundError,
    load_backbone,
)
from introspect.config import ConfigError
from introspect.data import DataError, ImageDataModule, build_augmentation, build_datamodule
from introspect.models.feedforward import FeedForwardClassifier
from introspect.runs.distributed import launch
from introspect.runs.rundir import build_loggers, prepare_run_dir
from introspect.runs.splits import evaluation_splits
from introspect.runs.stage2 import resolve_device


class PipelineError(RuntimeError):
    """A run that cannot proceed (e.g. class counts disagree); the message says the fix."""


# Errors caused by what the user asked for: entry points print their message, not a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (
    PipelineError,
    DataError,
    BackboneError,
    CheckpointError,
    HeadNotFoundError,
    ConfigError,
)


def quiet_library_warnings() -> None:
    """Hide warnings that concern library internals, not the user's run (for entry points)."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def build_trainer(
    cfg: DictConfig,
    run_dir: Path,
    *,
    loggers: list[Logger] | bool = False,
    callbacks: list[Callback] | None = None,
    max_epochs: int | None = None,
    **overrides: Any,
) -> L.Trainer:
    """A ``lightning.Trainer`` from ``cfg.trainer`` writing under ``run_dir``."""
    t = cfg.trainer
    kwargs: dict[str, Any] = {
        "accelerator": t.accelerator,
        "devices": t.devices,
        "num_nodes": t.num_nodes,
        "strategy": t.strategy,
        "precision": t.precision,
        "deterministic": t.deterministic,
        "log_every_n_steps": t.log_every_n_steps,
        "enable_progress_bar": t.enable_progress_bar,
        "gradient_clip_val": t.gradient_clip_val,
        "fast_dev_run": t.fast_dev_run,
        "default_root_dir": str(run_dir),
        "logger": loggers,
        "callbacks": callbacks or [],
        "enable_model_summary": False,
        "max_epochs": max_epochs,
    }
    for key in ("limit_train_batches", "limit_val_batches"):
        if t[key] is not None:
            kwargs[key] = t[key]
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def build_data(cfg: DictConfig) -> ImageDataModule:
    """The datamodule of ``cfg.data``, set up, with stage 1's training augmentation."""
    dm = build_datamodule(cfg.data)
    dm.setup()
    dm.train_transform = build_augmentation(
        cfg.stage1.augment,
        image_size=dm.image_shape[-1],
        noise_std=cfg.stage1.noise_std,
        augmix_severity=cfg.stage1.augmix_severity,
    )
    return dm


def build_backbone(
    cfg: DictConfig, num_classes: int, image_shape: tuple[int, int, int]
) -> Backbone:
    """The stage-1 network of ``cfg.backbone``; its output count must match the data's classes."""
    b = cfg.backbone
    if b.num_classes is not None and b.num_classes != num_classes:
        raise PipelineError(
            f"backbone.num_classes={b.num_classes} but the data ({cfg.data.source}) has "
            f"{num_classes} classes; remove backbone.num_classes or pick matching data"
        )
    backbone = load_backbone(
        b.name,
        b.checkpoint,
        num_classes=num_classes,
        mean=list(b.mean) if b.mean is not None else None,
        std=list(b.std) if b.std is not None else None,
        head=b.head,
        cifar_stem=b.cifar_stem,
        pretrained=b.pretrained,
        trust_checkpoint=b.trust_checkpoint,
        input_size=tuple(image_shape),
        kwargs=dict(b.kwargs),
    )
    if backbone.num_classes != num_classes:
        raise PipelineError(
            f"backbone {b.name!r} outputs {backbone.num_classes} classes but the data has "
            f"{num_classes}; use a checkpoint trained on this data or set backbone.num_classes"
        )
    return backbone


def stage1(
    cfg: DictConfig,
    dm: ImageDataModule,
    backbone: Backbone,
    run_dir: Path,
    loggers: list[Logger],
    *,
    name: str = "stage1",
) -> FeedForwardClassifier:
    """Train the feed-forward classifier unless ``backbone.checkpoint`` is set; return it.

    Training keeps the best (by validation accuracy) and the last checkpoint under
    ``<run>/checkpoints`` (``<name>-best.ckpt``, ``<name>-last.ckpt``) and continues with the
    best weights.
    """
    model = FeedForwardClassifier(
        backbone,
        num_classes=dm.num_classes,
        optim=dict(cfg.stage1.optim),
        label_smoothing=cfg.stage1.label_smoothing,
        adversarial=dict(cfg.stage1.adversarial),
    )
    if cfg.backbone.checkpoint is not None:
        return model
    ckpt = ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename=f"{name}-best",
        monitor="feedforward/val/acc",
        mode="max",
        save_last=True,
    )
    ckpt.CHECKPOINT_NAME_LAST = f"{name}-last"
    trainer = build_trainer(
        cfg, run_dir, loggers=loggers, callbacks=[ckpt], max_epochs=cfg.stage1.epochs
    )
    trainer.fit(model, datamodule=dm)
    if ckpt.best_model_path:
        state = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["state_dict"])
    return model


def stage1_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
    """The weights a finished run's backbone is restored from (configured or trained here)."""
    if cfg.backbone.checkpoint is not None:
        return str(cfg.backbone.checkpoint)
    best = run_dir / "checkpoints" / "stage1-best.ckpt"
    if best.is_file():
        return str(best)
    last = run_dir / "checkpoints" / "stage1-last.ckpt"
    return str(last) if last.is_file() else None


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the configured job end to end (stage 1, stage 2, evaluation) and return the results.

    With several processes (``trainer.devices``/``trainer.num_nodes``) every stage runs on all
    of them and each returns the same results; rank zero writes the run directory.
    """
    from introspect.runs.baselines import prepare_baselines, resolve_ensemble_config
    from introspect.runs.report import evaluate_and_report
    from introspect.runs.stage2 import stage2

    start = time.perf_counter()
    resolve_ensemble_config(cfg)
    for key in ("extract_batch_size", "shard_batches"):
        if cfg.stage2[key] < 1:
            raise ConfigError(f"stage2.{key}={cfg.stage2[key]} must be a positive integer")
    L.seed_everything(cfg.run.seed, workers=True, verbose=False)
    dm = build_data(cfg)
    splits = evaluation_splits(cfg, dm, resolve_device(cfg))  # checked before any work
    backbone = build_backbone(cfg, dm.num_classes, dm.image_shape)
    launch(cfg)  # after the checks above: a bad configuration fails before processes start
    run_dir = prepare_run_dir(cfg)
    loggers = build_loggers(cfg, run_dir)
    stage1(cfg, dm, backbone, run_dir, loggers)
    heads = stage2(cfg, dm, backbone, run_dir, loggers) if cfg.stage2.enabled else {}
    baselines = prepare_baselines(
        cfg, dm, backbone, heads, run_dir, train=True, device=resolve_device(cfg)
    )
    results = evaluate_and_report(
        cfg, dm, backbone, heads, splits, run_dir, loggers, started=start, baselines=baselines
    )
    for logger in loggers:
        logger.finalize("success")
    return results


def reevaluate(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Reload a finished run's backbone and heads and evaluate them again on ``cfg.eval``."""
    from introspect.runs.baselines import prepare_baselines
    from introspect.runs.report import evaluate_and_report
    from introspect.runs.stage2 import load_heads

    start = time.perf_counter()
    dm = build_data(cfg)
    splits = evaluation_splits(cfg, dm, resolve_device(cfg))
    checkpoint = stage1_checkpoint(cfg, run_dir)
    if checkpoint is None:
        raise PipelineError(f"{run_dir} holds no stage-1 checkpoint; was the run finished?")
    cfg.backbone.checkpoint = checkpoint
    backbone = build_backbone(cfg, dm.num_classes, dm.image_shape).eval()
    heads = load_heads(cfg, backbone, run_dir, dm.num_classes)
    launch(cfg)
    baselines = prepare_baselines(
        cfg, dm, backbone, heads, run_dir, train=False, device=resolve_device(cfg)
    )
    loggers = build_loggers(cfg, run_dir, csv_version="evaluate")
    results = evaluate_and_report(
        cfg, dm, backbone, heads, splits, run_dir, loggers, started=start, baselines=baselines
    )
    for logger in loggers:
        logger.finalize("success")
    return results
