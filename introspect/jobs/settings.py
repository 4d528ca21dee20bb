"""The values the stages take, built from a validated configuration in one place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from introspect.runs.rundir import config_digest
from introspect.runs.trainer import resolve_device
from introspect.stages.baselines import CalibrationPlan, trained_here
from introspect.stages.evaluate import ReportOptions
from introspect.stages.options import (
    FeatureOptions,
    HeadRecipe,
    Stage2Settings,
    TrainingData,
)
from introspect.uncertainty import MCDropout

# Data fields that change which images a split holds (not how they are batched or loaded).
_DATA_IDENTITY = (
    "source", "path", "test_path", "val_fraction", "test_fraction", "split_seed", "image_size",
    "num_classes", "num_samples",
)  # fmt: skip


def _plain(section: Any) -> dict[str, Any]:
    out = OmegaConf.to_container(section, resolve=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]


def feature_options(cfg: DictConfig) -> FeatureOptions:
    """``cfg.stage2.features`` as ``FeatureOptions``."""
    return FeatureOptions(**_plain(cfg.stage2.features))


def head_recipe(cfg: DictConfig) -> HeadRecipe:
    """``cfg.stage2.head`` as ``HeadRecipe``."""
    h = _plain(cfg.stage2.head)
    return HeadRecipe(**(h | {"hidden": tuple(h["hidden"])}))


def data_identity(cfg: DictConfig) -> dict[str, Any]:
    """The data fields naming the images of a cached split; ``val_from`` only when it is not
    the default, so entries made before that option existed stay valid."""
    identity = {k: cfg.data[k] for k in _DATA_IDENTITY}
    if cfg.data.get("val_from", "train") != "train":
        identity["val_from"] = cfg.data.val_from
    return identity


def stage2_settings(cfg: DictConfig) -> Stage2Settings:
    """Everything stage 2 takes from ``cfg`` (``stage2``, ``run``, ``trainer``, ``data``)."""
    s2 = cfg.stage2
    data = TrainingData(
        splits=tuple(s2.splits),
        augment=s2.augment,
        passes=s2.passes,
        include_clean=s2.include_clean,
        noise_std=s2.noise_std,
        augmix_severity=s2.augmix_severity,
        extract_batch_size=s2.extract_batch_size,
        shard_batches=s2.shard_batches,
        identity=data_identity(cfg),
        seed=cfg.run.seed,
    )
    return Stage2Settings(
        features=feature_options(cfg),
        head=head_recipe(cfg),
        data=data,
        control=bool(s2.control),
        control_hp=bool(s2.control_hp),
        seed=cfg.run.seed,
        cache_dir=s2.cache_dir,
        resume=bool(cfg.run.resume),
        progress=bool(cfg.trainer.enable_progress_bar),
        gradient_clip_val=cfg.trainer.gradient_clip_val,
    )


def report_options(cfg: DictConfig) -> ReportOptions:
    """What ``stages.evaluate.evaluate_and_report`` takes from ``cfg`` (``run``, ``eval``,
    ``trainer``, ``data``), the resolved configuration included."""
    return ReportOptions(
        config=_plain(cfg),
        digest=config_digest(cfg),
        run_name=cfg.run.name,
        run_dir=str(cfg.run.dir) if cfg.run.dir else None,
        seed=cfg.run.seed,
        device=str(resolve_device(cfg)),
        batch_size=cfg.eval.batch_size,
        n_bins=cfg.eval.n_bins,
        progress=bool(cfg.trainer.enable_progress_bar),
        skip_bad_files=bool(cfg.data.get("skip_bad_files")),
    )


def calibration_plan(cfg: DictConfig, run_dir: Path) -> CalibrationPlan:
    """Where the run in ``run_dir`` fits its temperatures (``eval.calibration_split``)."""
    return CalibrationPlan(
        split=cfg.eval.calibration_split,
        stage2_splits=tuple(cfg.stage2.splits),
        trained_here=trained_here(cfg.backbone.checkpoint, run_dir),
        val_fraction=cfg.data.val_fraction,
        batch_size=cfg.eval.batch_size,
    )


def mc_dropout(cfg: DictConfig) -> MCDropout | None:
    """The MC-dropout baseline of ``cfg.eval.mc_dropout`` (none with 0 samples)."""
    mc = cfg.eval.mc_dropout
    return MCDropout(mc.samples, mc.p, seed=mc.seed) if mc.samples > 0 else None
