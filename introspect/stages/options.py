"""The values stages 1 and 2 work with, as small frozen records: built once from the
configuration by the command layer (``jobs.settings``) or written directly by a library user."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import lightning as L

from introspect.config.schema import BackboneConfig, DataConfig, Stage1Config, TrainerConfig


@dataclass(frozen=True)
class FeatureOptions:
    """Options of the introspective gradient feature (see ``gradients.extract``): the loss, the
    target it is taken against, per-class blocks, the bias column and the normalization
    (``l2``, ``none`` or ``standardize``, the latter fitted on the training features)."""

    loss: str = "ce"
    target: str = "ones"
    per_class: bool = False
    include_bias: bool = False
    normalize: str = "l2"

    def as_dict(self) -> dict[str, Any]:
        """All options, as ``gradients.extract`` and the introspective head take them."""
        return asdict(self)

    def extraction(self) -> dict[str, Any]:
        """The options features are extracted and cached with: standardization is applied
        later, by the head, so it extracts unnormalized features."""
        opts = self.as_dict()
        if opts["normalize"] == "standardize":
            opts["normalize"] = "none"
        return opts


@dataclass(frozen=True)
class HeadRecipe:
    """The stage-2 MLP shared by the introspective and control heads and its training:
    ``rank`` 0 gives the introspective head a full first layer, r > 0 a low-rank bilinear one
    on the gradient factors; ``optim`` holds ``models.optim.build_optimizer``'s options."""

    hidden: tuple[int, ...] = (256, 128)
    rank: int = 0
    dropout: float = 0.1
    activation: str = "relu"
    epochs: int = 40
    batch_size: int = 128
    optim: Mapping[str, Any] = field(
        default_factory=lambda: {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4}
    )


@dataclass(frozen=True)
class TrainingData:
    """Which images stage 2's heads train on in a run: the ``splits`` of the data module, each
    with ``passes`` augmented copies under ``augment`` (plus the clean copy with
    ``include_clean``), and how the cache of their features is cut and identified.

    ``identity`` is what names the images of a split in the cache (source, paths, split
    fractions and seeds); ``seed`` seeds the per-image augmentation draws.
    """

    splits: tuple[str, ...] = ("train",)
    augment: str = "none"
    passes: int = 1
    include_clean: bool = False
    noise_std: float = 0.1
    augmix_severity: int = 3
    extract_batch_size: int = 256
    shard_batches: int = 8
    identity: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0

    def recipes(self) -> list[tuple[str, str, int]]:
        """``(split, augmentation, pass)`` triples making up the training data."""
        out: list[tuple[str, str, int]] = []
        for split in self.splits:
            if self.augment == "none":
                out.append((split, "none", 0))
                continue
            if self.include_clean:
                out.append((split, "none", 0))
            out += [(split, self.augment, k) for k in range(self.passes)]
        return out


# Builds a Lightning trainer from keyword overrides (``max_epochs``, ``gradient_clip_val``...).
TrainerFactory = Callable[..., L.Trainer]


@dataclass(frozen=True)
class Stage2Settings:
    """Everything a run's stage 2 needs besides data, backbone and run directory."""

    features: FeatureOptions = field(default_factory=FeatureOptions)
    head: HeadRecipe = field(default_factory=HeadRecipe)
    data: TrainingData = field(default_factory=TrainingData)
    control: bool = True
    control_hp: bool = True
    seed: int = 0
    cache_dir: str = "~/.cache/introspect/features"
    resume: bool = False
    progress: bool = False
    gradient_clip_val: float | None = None


@dataclass(frozen=True)
class Stage1Options:
    """Everything stage 1 takes: the data, backbone and stage-1 sections, the trainer settings,
    whether the run is resumed and its seed (the sections are the schema's typed records)."""

    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    resume: bool = False
    seed: int = 0

    def with_backbone(self, **changes: Any) -> Stage1Options:
        """These options with the backbone fields ``changes`` replaced (a new record)."""
        return replace(self, backbone=replace(self.backbone, **changes))
