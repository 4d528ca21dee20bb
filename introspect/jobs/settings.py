"""The values the stages take, built from a validated configuration in one place."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from introspect.stages.options import (
    FeatureOptions,
    HeadRecipe,
    Stage2Settings,
    TrainingData,
)

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
        seed=cfg.run.seed,
        cache_dir=s2.cache_dir,
        resume=bool(cfg.run.resume),
        progress=bool(cfg.trainer.enable_progress_bar),
        gradient_clip_val=cfg.trainer.gradient_clip_val,
    )
