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
from introspect.backbones.protopnet import is_protopnet
from introspect.config import ConfigError
from introspect.data import DataError, ImageDataModule, build_augmentation, build_datamodule
from introspect.models.feedforward import FeedForwardClassifier
from introspect.runs.active import ActiveError
from introspect.runs.distributed import (
    barrier,
    broadcast_from_zero,
    is_global_zero,
    launch,
    trainer_strategy,
)
from introspect.runs.rundir import build_loggers, check_run_dir, prepare_run_dir
from introspect.runs.splits import evaluation_splits
from introspect.runs.stage2 import resolve_device
from introspect.runs.status import mark_stage_done, now, stages_done, update_status


class PipelineError(RuntimeError):
    """A run that cannot proceed (e.g. class counts disagree); the message says the fix."""


# Errors caused by what the user asked for: entry points print their message, not a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (
    PipelineError,
    ActiveError,
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
        "strategy": trainer_strategy(cfg),
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


class RandomStates(Callback):
    """Keeps the random states of torch, NumPy and Python in every checkpoint and restores them
    on resume, so a resumed run draws what the uninterrupted run would have drawn."""

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["random_states"] = random_states()

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if "random_states" in checkpoint:
            set_random_states(checkpoint["random_states"])


def random_states() -> dict[str, Any]:
    """The global random states as tensors and lists (loadable with ``weights_only=True``)."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [str(kind), torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss),
                  float(cached)],
        "python": [int(version), list(state), gauss],
    }  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: dict[str, Any]) -> None:
    """Restore what ``random_states`` returned."""
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


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
    best weights. With ``run.resume`` training continues from the last checkpoint (weights,
    optimizer, schedule, epoch, random states), or is skipped when the run finished ``name``.
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
    if is_protopnet(backbone):
        from introspect.runs.protopnet import protopnet_stage1

        protopnet_stage1(cfg, dm, backbone, run_dir, loggers)
        return model
    folder = run_dir / "checkpoints"
    best, last = folder / f"{name}-best.ckpt", folder / f"{name}-last.ckpt"
    finished = cfg.run.resume and name in broadcast_from_zero(stages_done(run_dir))
    if not finished:
        ckpt = ModelCheckpoint(
            dirpath=str(folder),
            filename=f"{name}-best",
            monitor="feedforward/val/acc",
            mode="max",
            save_last=True,
            enable_version_counter=False,
        )
        ckpt.CHECKPOINT_NAME_LAST = f"{name}-last"
        trainer = build_trainer(
            cfg,
            run_dir,
            loggers=loggers,
            callbacks=[ckpt, RandomStates()],
            max_epochs=cfg.stage1.epochs,
        )
        resume_from = str(last) if cfg.run.resume and broadcast_from_zero(last.is_file()) else None
        trainer.fit(model, datamodule=dm, ckpt_path=resume_from)
        best = Path(ckpt.best_model_path) if ckpt.best_model_path else best
    if best.is_file():
        state = torch.load(best, map_location="cpu", weights_only=True)
        model.load_state_dict(state["state_dict"])
    elif finished:
        raise PipelineError(f"{best} is missing; the run cannot be resumed, only overwritten")
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

    The run directory is checked first (``rundir.check_run_dir``), then data, evaluation splits
    and backbone are built and checked before any training. ``status.json`` follows the run
    (``running`` with its stage, ``failed`` with the error, ``complete``); with
    ``run.resume=true`` every finished stage is reused. With several processes
    (``trainer.devices``/``trainer.num_nodes``) every stage runs on all of them and each
    returns the same results; rank zero writes the run directory.
    """
    from introspect.runs.baselines import prepare_baselines
    from introspect.runs.report import evaluate_and_report
    from introspect.runs.stage2 import stage2

    if cfg.active.enabled:
        from introspect.runs.active import run_active

        return run_active(cfg)
    start = time.perf_counter()
    check_run_dir(cfg)
    L.seed_everything(cfg.run.seed, workers=True, verbose=False)
    dm = build_data(cfg)
    splits = evaluation_splits(cfg, dm, resolve_device(cfg))  # checked before any work
    backbone = build_backbone(cfg, dm.num_classes, dm.image_shape)
    launch(cfg)  # after the checks above: a bad configuration fails before processes start
    run_dir = prepare_run_dir(cfg)
    zero = is_global_zero()
    try:
        loggers = build_loggers(cfg, run_dir, csv_version=_log_version(cfg, run_dir))
        if zero:
            update_status(run_dir, stage="stage1")
        stage1(cfg, dm, backbone, run_dir, loggers)
        if zero:
            mark_stage_done(run_dir, "stage1")
            update_status(run_dir, stage="stage2")
        heads = stage2(cfg, dm, backbone, run_dir, loggers) if cfg.stage2.enabled else {}
        if zero:
            mark_stage_done(run_dir, "stage2")
            update_status(run_dir, stage="evaluation")
        baselines = prepare_baselines(
            cfg, dm, backbone, heads, run_dir, train=True, device=resolve_device(cfg)
        )
        results = evaluate_and_report(
            cfg, dm, backbone, heads, splits, run_dir, loggers, started=start, baselines=baselines
        )
        for logger in loggers:
            logger.finalize("success")
    except BaseException as err:
        if zero:
            update_status(run_dir, state="failed", error=_describe_error(err), failed=now())
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


def _log_version(cfg: DictConfig, run_dir: Path) -> str:
    """The CSV log folder of this process's part of the run: ``""`` for a fresh run,
    ``resume-K`` for its K-th resumption (earlier logs are kept)."""
    if not cfg.run.resume:
        return ""
    k = 1
    while (run_dir / "logs" / f"resume-{k}").exists():
        k += 1
    return f"resume-{k}"


def _describe_error(err: BaseException) -> str:
    if isinstance(err, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt)"
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def reevaluate(cfg: DictConfig, run_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Reload a finished run's backbone and heads, evaluate them again on ``cfg.eval`` and
    write the results to ``out_dir`` (e.g. ``<run>/evaluations/<tag>``; the run's own
    ``results.json`` is never touched). An interrupted re-evaluation into the same
    ``out_dir`` continues where it stopped."""
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
    if is_global_zero():
        out_dir.mkdir(parents=True, exist_ok=True)
    barrier()
    baselines = prepare_baselines(
        cfg, dm, backbone, heads, run_dir, train=False, device=resolve_device(cfg)
    )
    loggers = build_loggers(cfg, out_dir)
    results = evaluate_and_report(
        cfg,
        dm,
        backbone,
        heads,
        splits,
        out_dir,
        loggers,
        started=start,
        extra_run_info={"evaluation_of": str(run_dir)},
        baselines=baselines,
    )
    for logger in loggers:
        logger.finalize("success")
    return results
