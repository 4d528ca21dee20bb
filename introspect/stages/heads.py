"""Stage 2 of a run: cached features of the configured data recipe, then the two heads."""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Subset

from introspect.config import ConfigError
from introspect.data import DataError, ImageDataModule
from introspect.data.augment import augment_batches, build_batch_augmentation
from introspect.data.batches import IndexedBatches, ZippedBatches
from introspect.data.images import IndexedDataset
from introspect.data.samplers import block_bounds
from introspect.data.seeding import RngStream, derive_seed
from introspect.gradients.batches import features_of, iter_features
from introspect.gradients.cache import (
    CacheError,
    FeatureCache,
    InconsistentEntry,
    Problems,
    cache_key,
    summarize,
    weights_digest,
)
from introspect.gradients.extract import FeatureSpec, feature_dim
from introspect.gradients.factors import GradientFactors
from introspect.gradients.normalize import normalize_features
from introspect.models.pair import HeadPair
from introspect.models.stage2 import (
    MAX_FULL_WEIGHTS,
    IntrospectiveClassifier,
    ProbeClassifier,
    StageTwoClassifier,
)
from introspect.runs.distributed import (
    barrier,
    broadcast_from_zero,
    gather_from_all,
    global_rank,
    is_global_zero,
    world_size,
)
from introspect.runs.errors import PipelineError
from introspect.runs.trainer import build_trainer, console_is_terminal, resolve_device

# Data fields that change which images a split holds (not how they are batched or loaded).
_DATA_IDENTITY = (
    "source", "path", "test_path", "val_fraction", "test_fraction", "split_seed", "image_size",
    "num_classes", "num_samples",
)  # fmt: skip


def _data_identity(cfg: DictConfig) -> dict[str, Any]:
    """The data fields of a cache recipe; ``val_from`` only when it is not the default, so
    entries made before that option existed stay valid."""
    identity = {k: cfg.data[k] for k in _DATA_IDENTITY}
    if cfg.data.get("val_from", "train") != "train":
        identity["val_from"] = cfg.data.val_from
    return identity


def feature_options(cfg: DictConfig) -> dict[str, Any]:
    """Options passed to ``gradients.extract`` for caching (standardization is applied later)."""
    opts = OmegaConf.to_container(cfg.stage2.features, resolve=True)
    assert isinstance(opts, dict)
    if opts["normalize"] == "standardize":
        opts["normalize"] = "none"
    return opts


def _recipes(cfg: DictConfig) -> list[tuple[str, str, int]]:
    """``(split, augmentation, pass)`` triples making up stage 2's training data."""
    s2 = cfg.stage2
    out: list[tuple[str, str, int]] = []
    for split in s2.splits:
        if s2.augment == "none":
            out.append((split, "none", 0))
            continue
        if s2.include_clean:
            out.append((split, "none", 0))
        out += [(split, s2.augment, k) for k in range(s2.passes)]
    return out


def split_features(
    cfg: DictConfig,
    dm: ImageDataModule,
    backbone: torch.nn.Module,
    split: str,
    augment: str = "none",
    pass_index: int = 0,
    *,
    cache: FeatureCache,
    digest: str,
    out: dict[str, torch.Tensor] | None = None,
    offset: int = 0,
    total: int | None = None,
) -> dict[str, torch.Tensor]:
    """Features of one split under one augmentation pass, from the cache after its missing
    shards are extracted: each process of the run extracts a contiguous block of them.
    ``out``/``offset``/``total``: load into rows of one tensor per field (``FeatureCache.load``).

    Every process loads the entry; when any finds it inconsistent, rank zero discards what was
    wrong and all extract it again, once (``CacheError`` if the entry is still inconsistent).
    """
    s2 = cfg.stage2
    recipe: dict[str, Any] = {
        "backbone": digest,
        "features": feature_options(cfg),
        "data": _data_identity(cfg),
        "split": split,
        "augment": augment,
    }
    dataset = dm.split(split)
    augmentation = None
    if augment != "none":
        # "seeding" names how per-image draws are seeded: a change must not hit old entries.
        recipe |= {"pass": pass_index, "seed": cfg.run.seed, "seeding": "derive_seed-v1"}
        recipe |= {"noise_std": s2.noise_std} if augment == "gaussian_noise" else {}
        if augment == "augmix":
            # The batched AugMix draws its choices differently from torchvision's per image.
            recipe |= {"augmix_severity": s2.augmix_severity, "augmix": "batched-v1"}
        augmentation = build_batch_augmentation(
            augment,
            image_size=dm.image_shape[-1],
            noise_std=s2.noise_std,
            augmix_severity=s2.augmix_severity,
        )
    num_samples = len(dataset)  # type: ignore[arg-type]
    if num_samples == 0:
        raise DataError(f"stage 2 needs features of the {split} split, but it holds no images")
    key = cache_key(recipe)
    shard_size = s2.extract_batch_size * s2.shard_batches
    problems: Problems = []
    for _ in range(2):  # again once after discarding what a process found inconsistent
        if problems and is_global_zero():
            cache.discard(key, problems)
        plan = broadcast_from_zero(
            cache.plan(key, recipe, num_samples=num_samples, shard_size=shard_size)
            if is_global_zero()
            else None
        )
        assert plan is not None
        if plan.missing:
            start, stop = block_bounds(len(plan.missing), global_rank(), world_size())
            mine = plan.missing[start:stop]
            if mine:
                indices = [i for shard in mine for i in range(*plan.bounds(shard))]
                size = s2.extract_batch_size
                if augmentation is None:
                    loader = dm.loader(Subset(dataset, indices), batch_size=size)
                    images: Iterable[tuple[torch.Tensor, torch.Tensor]] = loader
                else:  # augmented per batch, each image under its own (seed, pass, index) draws
                    loader = dm.loader(Subset(IndexedDataset(dataset), indices), batch_size=size)
                    seed = derive_seed(cfg.run.seed, augment, pass_index)
                    images = augment_batches(loader, augmentation, seed)
                desc = f"features {split}/{augment}/{pass_index}"
                show = is_global_zero() and bool(cfg.trainer.enable_progress_bar)
                batches = iter_features(
                    backbone,
                    images,
                    feature_options=feature_options(cfg),
                    device=resolve_device(cfg),
                    desc=desc,
                    total=len(loader),
                    progress=show and console_is_terminal(),  # tqdm's bar on a terminal only
                )
                started = time.perf_counter()
                cache.write_shards(plan, mine, batches)
                if show and not console_is_terminal():
                    seconds = time.perf_counter() - started
                    print(f"{desc}: {len(indices)} images in {seconds:.1f} s", file=sys.stderr)
            barrier()
            if is_global_zero():
                cache.finish(plan)
            barrier()
        features, problems = _load_everywhere(cache, key, out, offset, total)
        if features is not None:
            return features
    raise CacheError(
        f"{cache.entry_dir(key)} is still inconsistent after discarding and recomputing what "
        f"was wrong ({summarize(problems)})"
    )


def _load_everywhere(
    cache: FeatureCache,
    key: str,
    out: dict[str, torch.Tensor] | None = None,
    offset: int = 0,
    total: int | None = None,
) -> tuple[dict[str, torch.Tensor] | None, Problems]:
    """Entry ``key`` as this process loads it and what any process found wrong with it (then
    no features): every process of the run gets the same verdict."""
    try:
        loaded = (
            cache.load(key) if out is None else cache.load(key, out=out, offset=offset, total=total)
        )
        features, mine = loaded, []
    except InconsistentEntry as err:
        features, mine = None, err.problems
    problems = list(dict.fromkeys(p for found in gather_from_all(mine) for p in found))
    return (None if problems else features), problems


def _head_inputs(
    cfg: DictConfig, kind: str, tensors: dict[str, torch.Tensor], num_classes: int
) -> torch.Tensor | GradientFactors:
    """What head ``kind`` trains on: the gradient factors of the cached fields (introspective)
    or the normalized penultimate activations (control)."""
    features = cfg.stage2.features
    if kind == "introspective":
        return features_of(
            tensors,
            num_classes=num_classes,
            normalize=features.normalize,
            include_bias=features.include_bias,
        )
    normalize = features.normalize
    return normalize_features(
        tensors["penult"], "none" if normalize == "standardize" else normalize
    )


def introspective_dim(cfg: DictConfig, backbone: torch.nn.Module) -> int:
    """Length F of the introspective features of ``backbone``'s head under ``cfg.stage2``."""
    head = backbone.head
    opts = OmegaConf.to_container(cfg.stage2.features, resolve=True)
    assert isinstance(opts, dict)
    classes, inputs = head.weight.shape
    return feature_dim(FeatureSpec(**opts), classes, inputs, head.bias is not None)


def check_head_size(cfg: DictConfig, backbone: torch.nn.Module) -> None:
    """Raise ``ConfigError`` (before any work) when the introspective head's full first layer
    would exceed ``MAX_FULL_WEIGHTS``, or a low-rank one is asked with standardization."""
    s2 = cfg.stage2
    if not s2.enabled:
        return
    if s2.head.rank and s2.features.normalize == "standardize":
        raise ConfigError(
            "stage2.head.rank>0 needs stage2.features.normalize=l2 or none (a low-rank first "
            "layer does not fold standardization); set stage2.head.rank=0 or change normalize"
        )
    width = s2.head.hidden[0] if len(s2.head.hidden) else backbone.head.weight.shape[0]
    weights = introspective_dim(cfg, backbone) * width
    if not s2.head.rank and weights > MAX_FULL_WEIGHTS:
        raise ConfigError(
            f"the introspective head's first layer would hold {weights:,} weights (more than "
            f"{MAX_FULL_WEIGHTS:,}); set stage2.head.rank=r for a low-rank bilinear layer "
            "(e.g. stage2.head.rank=8)"
        )


def build_head(
    cfg: DictConfig, kind: str, backbone: torch.nn.Module, in_dim: int, num_classes: int
) -> StageTwoClassifier:
    """An untrained introspective or control head for ``backbone`` from ``cfg.stage2``."""
    h = cfg.stage2.head
    common: dict[str, Any] = {
        "num_classes": num_classes,
        "in_dim": in_dim,
        "hidden": list(h.hidden),
        "dropout": h.dropout,
        "activation": h.activation,
        "optim": dict(h.optim),
    }
    if kind == "introspective":
        opts = OmegaConf.to_container(cfg.stage2.features, resolve=True)
        assert isinstance(opts, dict)
        return IntrospectiveClassifier(
            backbone, feature_options=opts, rank=h.get("rank", 0), **common
        )
    return ProbeClassifier(backbone, normalize=cfg.stage2.features.normalize, **common)


def stage2(
    cfg: DictConfig,
    dm: ImageDataModule,
    backbone: torch.nn.Module,
    run_dir: Path,
    loggers: list[Logger],
) -> dict[str, StageTwoClassifier]:
    """Train the introspective head (and the control unless switched off) on cached features.

    Heads are saved to ``<run>/stage2/<kind>.pt`` (by rank zero); validation uses the clean
    ``val`` split unless ``val`` is part of the training recipe. Every process holds the whole
    training features in memory (the introspective head's as gradient factors, one tensor per
    field for all recipes); each process trains on its share of the batches, drawn by index
    slicing in the order of Lightning's distributed sampler. The two heads train together in
    one pass (``models.pair.HeadPair``), each with the weights training it alone would give.
    """
    # Extraction runs where trainer.accelerator says (Lightning moves modules back after fit).
    backbone.eval().to(resolve_device(cfg))
    cache = FeatureCache(cfg.stage2.cache_dir)
    digest = weights_digest(backbone)
    if broadcast_from_zero(digest) != digest:
        raise RuntimeError(
            f"the backbone's weights on process {global_rank()} differ from rank zero's; every "
            "process must build the same backbone (same run.seed or backbone.checkpoint)"
        )
    recipes = _recipes(cfg)
    counts = [len(dm.split(split)) for split, _, _ in recipes]
    train: dict[str, torch.Tensor] = {}  # every recipe's rows loaded into one tensor per field
    for recipe, offset in zip(recipes, [sum(counts[:i]) for i in range(len(counts))], strict=True):
        split_features(
            cfg, dm, backbone, *recipe, cache=cache, digest=digest,
            out=train, offset=offset, total=sum(counts),
        )  # fmt: skip
    val = None
    if "val" not in cfg.stage2.splits and len(dm.split("val")) > 0:
        val = split_features(cfg, dm, backbone, "val", cache=cache, digest=digest)

    kinds = ["introspective"] + (["control"] if cfg.stage2.control else [])
    heads: dict[str, StageTwoClassifier] = {}
    out_dir = run_dir / "stage2"
    if is_global_zero():
        out_dir.mkdir(exist_ok=True)
    batches = {"batch_size": cfg.stage2.head.batch_size, "rank": global_rank(),
               "world": world_size(), "seed": cfg.run.seed}  # fmt: skip
    todo: list[_HeadToTrain] = []
    for kind in kinds:
        path = out_dir / f"{kind}.pt"
        if cfg.run.resume and broadcast_from_zero(path.is_file()):
            # Trained before the run was interrupted (heads are written whole, atomically).
            heads[kind] = _load_head(cfg, kind, backbone, path, dm.num_classes)
            continue
        x = _head_inputs(cfg, kind, train, dm.num_classes)
        L.seed_everything(cfg.run.seed, workers=True, verbose=False)
        in_dim = introspective_dim(cfg, backbone) if kind == "introspective" else x.shape[1]
        head = build_head(cfg, kind, backbone, in_dim, dm.num_classes)
        head.fit_standardizer(x)
        # Training starts from the random state the head was built at, whatever runs between.
        stream = RngStream(cfg.run.seed)
        train_loader = IndexedBatches(x, train["labels"], shuffle=True, **batches)
        val_loader = None
        if val is not None:
            val_x = _head_inputs(cfg, kind, val, dm.num_classes)
            val_loader = IndexedBatches(val_x, val["labels"], **batches)
        todo.append(_HeadToTrain(head, stream, train_loader, val_loader))
    with warnings.catch_warnings():
        # The frozen backbone inside the head is in eval mode on purpose.
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode")
        _fit_heads(cfg, run_dir, loggers, todo)
    for item in todo:
        item.head.eval()
        if is_global_zero():
            _save_atomic(item.head.head_state(), out_dir / f"{item.head.kind}.pt")
        heads[item.head.kind] = item.head
    return {kind: heads[kind] for kind in kinds}


@dataclass
class _HeadToTrain:
    """A head to train, the random stream it starts from and its batches."""

    head: StageTwoClassifier
    stream: RngStream
    train: IndexedBatches
    val: IndexedBatches | None


def _fit_heads(
    cfg: DictConfig, run_dir: Path, loggers: list[Logger], todo: list[_HeadToTrain]
) -> None:
    """Train the heads of ``todo``: together in one pass when there are several (they share
    ``cfg.stage2.head``, the recipe), each with the weights training it alone would give."""
    if not todo:
        return
    settings: dict[str, Any] = {
        "loggers": loggers,
        "max_epochs": cfg.stage2.head.epochs,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
    }
    if len(todo) == 1:
        item = todo[0]
        with item.stream:
            build_trainer(cfg, run_dir, **settings).fit(
                item.head, train_dataloaders=item.train, val_dataloaders=item.val
            )
        return
    streams = [item.stream for item in todo]
    pair = HeadPair(
        [item.head for item in todo], streams, gradient_clip_val=cfg.trainer.gradient_clip_val
    )
    vals = [item.val for item in todo if item.val is not None]
    val = ZippedBatches(vals, streams) if vals else None
    # The pair clips each head's gradients itself (manual optimization).
    trainer = build_trainer(cfg, run_dir, gradient_clip_val=None, **settings)
    trainer.fit(
        pair,
        train_dataloaders=ZippedBatches([item.train for item in todo], streams),
        val_dataloaders=val,
    )


def _save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` so that readers see no file or the complete one."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _load_head(
    cfg: DictConfig, kind: str, backbone: torch.nn.Module, path: Path, num_classes: int
) -> StageTwoClassifier:
    """The head saved at ``path``; ``PipelineError`` naming the file when it is unreadable
    (corrupt, truncated) or does not fit this run's head (other shapes or keys)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        head = build_head(cfg, kind, backbone, state["feature_mean"].shape[0], num_classes)
        head.load_head_state(state)
    except Exception as err:  # torch and pickle raise many kinds for a damaged file
        text = " ".join(str(err).split())[:200]
        raise PipelineError(
            f"stage-2 head {path} cannot be loaded ({type(err).__name__}: {text}); delete it "
            "and continue with run.resume=true to train it again (a finished run: restore the "
            "file or redo the run with run.overwrite=true)"
        ) from None
    return head.eval()


def load_heads(
    cfg: DictConfig, backbone: torch.nn.Module, run_dir: Path, num_classes: int
) -> dict[str, StageTwoClassifier]:
    """The stage-2 heads saved in ``<run>/stage2/`` (none when stage 2 was switched off)."""
    heads: dict[str, StageTwoClassifier] = {}
    for kind in ("introspective", "control"):
        path = run_dir / "stage2" / f"{kind}.pt"
        if path.is_file():
            heads[kind] = _load_head(cfg, kind, backbone, path, num_classes)
    return heads
