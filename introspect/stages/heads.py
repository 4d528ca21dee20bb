"""Stage 2: introspective features (cached), then the introspective and control heads (the
control on the penultimate activations ``h``, and ``control_hp`` on ``[h, p]``).

``fit_heads`` is the one path that trains the heads, from plain DataLoaders (a library user)
or from the features a run extracted and cached for its data recipe (``stage2``, the CLI).
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, RandomSampler, Subset

from introspect.backbones import Backbone, as_backbone
from introspect.config import ConfigError
from introspect.data import DataError, ImageDataModule
from introspect.data.augment import augment_batches, build_batch_augmentation
from introspect.data.batches import IndexedBatches, ZippedBatches
from introspect.data.images import IndexedDataset
from introspect.data.samplers import block_bounds
from introspect.data.seeding import RngStream, derive_seed
from introspect.gradients.batches import features_of, iter_features
from introspect.gradients.cache import (
    FIELDS,
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
    KINDS,
    MAX_FULL_WEIGHTS,
    IntrospectiveClassifier,
    ProbeClassifier,
    ProbeWithOutputClassifier,
    StageTwoClassifier,
    features_and_output,
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
from introspect.runs.trainer import console_is_terminal
from introspect.stages.evaluation import FittedHeads, fit_head_temperatures
from introspect.stages.options import (
    FeatureOptions,
    HeadRecipe,
    Stage2Settings,
    TrainerFactory,
    TrainingData,
)

# Features: one tensor per cached field (``gradients.cache.FIELDS``), one row per image.
Features = Mapping[str, torch.Tensor]


def _split_recipe(
    data: TrainingData, features: FeatureOptions, digest: str, split: str, augment: str,
    pass_index: int,
) -> dict[str, Any]:  # fmt: skip
    """The cache recipe of one split under one augmentation pass."""
    recipe: dict[str, Any] = {
        "backbone": digest,
        "features": features.extraction(),
        "data": dict(data.identity),
        "split": split,
        "augment": augment,
    }
    if augment != "none":
        # "seeding" names how per-image draws are seeded: a change must not hit old entries.
        recipe |= {"pass": pass_index, "seed": data.seed, "seeding": "derive_seed-v1"}
        recipe |= {"noise_std": data.noise_std} if augment == "gaussian_noise" else {}
        if augment == "augmix":
            # The batched AugMix draws its choices differently from torchvision's per image.
            recipe |= {"augmix_severity": data.augmix_severity, "augmix": "batched-v1"}
    return recipe


def _extract_shards(
    dm: ImageDataModule, backbone: torch.nn.Module, split: str, augment: str, pass_index: int,
    indices: list[int], *, settings: Stage2Settings, device: torch.device | str,
) -> Iterable[dict[str, torch.Tensor]]:  # fmt: skip
    """Cached fields of the images ``indices`` of ``split``, batch by batch (augmented per
    batch, each image under its own ``(seed, pass, index)`` draws)."""
    data = settings.data
    dataset = dm.split(split)
    size = data.extract_batch_size
    if augment == "none":
        loader = dm.loader(Subset(dataset, indices), batch_size=size)
        images: Iterable[tuple[torch.Tensor, torch.Tensor]] = loader
    else:
        augmentation = build_batch_augmentation(
            augment,
            image_size=dm.image_shape[-1],
            noise_std=data.noise_std,
            augmix_severity=data.augmix_severity,
        )
        loader = dm.loader(Subset(IndexedDataset(dataset), indices), batch_size=size)
        images = augment_batches(loader, augmentation, derive_seed(data.seed, augment, pass_index))
    desc = f"features {split}/{augment}/{pass_index}"
    show = is_global_zero() and settings.progress
    batches = iter_features(
        backbone,
        images,
        feature_options=settings.features.extraction(),
        device=device,
        desc=desc,
        total=len(loader),
        progress=show and console_is_terminal(),  # tqdm's bar on a terminal only
    )
    started = time.perf_counter()
    yield from batches
    if show and not console_is_terminal():
        seconds = time.perf_counter() - started
        print(f"{desc}: {len(indices)} images in {seconds:.1f} s", file=sys.stderr)


def split_features(
    dm: ImageDataModule,
    backbone: torch.nn.Module,
    split: str,
    augment: str = "none",
    pass_index: int = 0,
    *,
    settings: Stage2Settings,
    cache: FeatureCache,
    digest: str,
    device: torch.device | str = "cpu",
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
    data = settings.data
    recipe = _split_recipe(data, settings.features, digest, split, augment, pass_index)
    num_samples = len(dm.split(split))  # type: ignore[arg-type]
    if num_samples == 0:
        raise DataError(f"stage 2 needs features of the {split} split, but it holds no images")
    key = cache_key(recipe)
    shard_size = data.extract_batch_size * data.shard_batches
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
                batches = _extract_shards(
                    dm, backbone, split, augment, pass_index, indices,
                    settings=settings, device=device,
                )  # fmt: skip
                cache.write_shards(plan, mine, batches)
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


def head_inputs(
    kind: str,
    tensors: Features,
    num_classes: int,
    features: FeatureOptions,
    backbone: torch.nn.Module | None = None,
) -> torch.Tensor | GradientFactors:
    """What head ``kind`` trains on: the gradient factors of the cached fields (introspective),
    the normalized penultimate activations ``h`` (control: L2-normalized per row under
    ``normalize=l2``, raw under ``none`` and ``standardize``, whose standardization the head
    applies), or ``control_hp``'s ``[h normalized the same way, softmax(backbone.head(h))]``
    (``models.stage2.features_and_output``; needs ``backbone``)."""
    if kind == "introspective":
        return features_of(
            dict(tensors),
            num_classes=num_classes,
            normalize=features.normalize,
            include_bias=features.include_bias,
        )
    normalize = "none" if features.normalize == "standardize" else features.normalize
    if kind == "control_hp":
        if backbone is None:
            raise ValueError("the control_hp head's inputs need the backbone (its softmax output)")
        return features_and_output(tensors["penult"], backbone.head, normalize)
    return normalize_features(tensors["penult"], normalize)


def introspective_dim(backbone: torch.nn.Module, features: FeatureOptions) -> int:
    """Length F of the introspective features of ``backbone``'s head under ``features``."""
    head = backbone.head
    classes, inputs = head.weight.shape
    return feature_dim(FeatureSpec(**features.as_dict()), classes, inputs, head.bias is not None)


def check_head_size(backbone: torch.nn.Module, head: HeadRecipe, features: FeatureOptions) -> None:
    """Raise ``ConfigError`` (before any work) when the introspective head's full first layer
    would exceed ``MAX_FULL_WEIGHTS``, or a low-rank one is asked with standardization."""
    if head.rank and features.normalize == "standardize":
        raise ConfigError(
            "stage2.head.rank>0 needs stage2.features.normalize=l2 or none (a low-rank first "
            "layer does not fold standardization); set stage2.head.rank=0 or change normalize"
        )
    width = head.hidden[0] if len(head.hidden) else backbone.head.weight.shape[0]
    weights = introspective_dim(backbone, features) * width
    if not head.rank and weights > MAX_FULL_WEIGHTS:
        raise ConfigError(
            f"the introspective head's first layer would hold {weights:,} weights (more than "
            f"{MAX_FULL_WEIGHTS:,}); set stage2.head.rank=r for a low-rank bilinear layer "
            "(e.g. stage2.head.rank=8)"
        )


def build_head(
    kind: str,
    backbone: torch.nn.Module,
    in_dim: int,
    num_classes: int,
    *,
    head: HeadRecipe,
    features: FeatureOptions,
) -> StageTwoClassifier:
    """An untrained head of ``kind`` (one of ``models.stage2.KINDS``) for ``backbone``."""
    common: dict[str, Any] = {
        "num_classes": num_classes,
        "in_dim": in_dim,
        "hidden": list(head.hidden),
        "dropout": head.dropout,
        "activation": head.activation,
        "optim": dict(head.optim),
    }
    if kind == "introspective":
        return IntrospectiveClassifier(
            backbone, feature_options=features.as_dict(), rank=head.rank, **common
        )
    probe = ProbeWithOutputClassifier if kind == "control_hp" else ProbeClassifier
    return probe(backbone, normalize=features.normalize, **common)


def loader_features(
    backbone: torch.nn.Module,
    loader: DataLoader,
    *,
    features: FeatureOptions,
    device: torch.device | str = "cpu",
    cache: FeatureCache | None = None,
    tag: str | None = None,
) -> dict[str, torch.Tensor]:
    """The cached fields (unnormalized gradient factors, penultimate activations, labels) of
    every image ``loader`` yields, in its order. With ``cache``, the entry named by ``tag``
    (what the loader holds, e.g. ``"cifar10/train"``), the backbone's weights and ``features``
    is reused when complete and written otherwise; its loader must not shuffle."""
    batches = iter_features(
        backbone, loader, feature_options=features.extraction(), device=device, progress=False
    )
    if cache is None:
        parts = list(batches)
        return {k: torch.cat([p[k] for p in parts]) for k in FIELDS}
    if tag is None:
        raise ValueError("a feature cache needs a tag naming the loader's images")
    if isinstance(loader.sampler, RandomSampler):
        raise ValueError(f"the loader of {tag!r} shuffles; a cached loader needs shuffle=False")
    num_samples = len(loader.dataset)  # type: ignore[arg-type]
    recipe = {
        "backbone": weights_digest(backbone),
        "features": features.extraction(),
        "loader": tag,
        "num_samples": num_samples,
    }
    key = cache_key(recipe)
    plan = cache.plan(key, recipe, num_samples=num_samples, shard_size=num_samples)
    if plan.missing:
        cache.write_shards(plan, plan.missing, batches)
        cache.finish(plan)
    return cache.load(key)


@dataclass
class _HeadToTrain:
    """A head to train, the random stream it starts from and its batches."""

    head: StageTwoClassifier
    stream: RngStream
    train: IndexedBatches
    val: IndexedBatches | None


def default_trainer(device: torch.device | str = "cpu") -> TrainerFactory:
    """A factory of quiet one-device trainers on ``device`` (no logger, checkpoints, progress
    bar or sanity check), which keyword overrides adjust."""
    accelerator = "gpu" if torch.device(device).type == "cuda" else "cpu"

    def make(**overrides: Any) -> L.Trainer:
        kwargs: dict[str, Any] = {
            "accelerator": accelerator,
            "devices": 1,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
        }
        return L.Trainer(**(kwargs | overrides))

    return make


def _prepare(
    kind: str, backbone: torch.nn.Module, train: Features, val: Features | None, *,
    num_classes: int, head: HeadRecipe, features: FeatureOptions, seed: int,
) -> _HeadToTrain:  # fmt: skip
    """Head ``kind`` built from the random state ``seed`` gives, its standardizer fitted on
    ``train``, and its batches."""
    batches = {"batch_size": head.batch_size, "rank": global_rank(), "world": world_size(),
               "seed": seed}  # fmt: skip
    x = head_inputs(kind, train, num_classes, features, backbone)
    L.seed_everything(seed, workers=True, verbose=False)
    in_dim = introspective_dim(backbone, features) if kind == "introspective" else x.shape[1]
    model = build_head(kind, backbone, in_dim, num_classes, head=head, features=features)
    model.fit_standardizer(x)
    # Training starts from the random state the head was built at, whatever runs between.
    stream = RngStream(seed)
    train_batches = IndexedBatches(x, train["labels"], shuffle=True, **batches)
    val_batches = None
    if val is not None:
        val_x = head_inputs(kind, val, num_classes, features, backbone)
        val_batches = IndexedBatches(val_x, val["labels"], **batches)
    return _HeadToTrain(model, stream, train_batches, val_batches)


def _train_together(
    todo: list[_HeadToTrain], trainer: TrainerFactory, epochs: int,
    gradient_clip_val: float | None,
) -> None:  # fmt: skip
    """Train the heads of ``todo``: together in one pass when there are several (they share
    one recipe), each with the weights training it alone would give."""
    if not todo:
        return
    settings: dict[str, Any] = {
        "max_epochs": epochs,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
    }
    if len(todo) == 1:
        item = todo[0]
        with item.stream:
            trainer(gradient_clip_val=gradient_clip_val, **settings).fit(
                item.head, train_dataloaders=item.train, val_dataloaders=item.val
            )
        return
    streams = [item.stream for item in todo]
    pair = HeadPair([item.head for item in todo], streams, gradient_clip_val=gradient_clip_val)
    vals = [item.val for item in todo if item.val is not None]
    val = ZippedBatches(vals, streams) if vals else None
    # The pair clips each head's gradients itself (manual optimization).
    trainer(gradient_clip_val=None, **settings).fit(
        pair,
        train_dataloaders=ZippedBatches([item.train for item in todo], streams),
        val_dataloaders=val,
    )


def _as_features(
    source: DataLoader | Features | None, backbone: torch.nn.Module, *,
    features: FeatureOptions, device: torch.device | str, cache: FeatureCache | None,
    tag: str | None,
) -> Features | None:  # fmt: skip
    """``source``'s cached fields: extracted from a DataLoader of images, or given."""
    if source is None or not isinstance(source, DataLoader):
        return source
    return loader_features(backbone, source, features=features, device=device, cache=cache, tag=tag)


def _image_shape(train: DataLoader | Features) -> tuple[int, ...]:
    """``(C, H, W)`` of the first training image; CIFAR's for features given."""
    if isinstance(train, DataLoader):
        return tuple(train.dataset[0][0].shape)
    return (3, 32, 32)


def fit_heads(
    backbone: torch.nn.Module,
    train: DataLoader | Features,
    val: DataLoader | Features | None = None,
    *,
    head: HeadRecipe | None = None,
    features: FeatureOptions | None = None,
    kinds: Sequence[str] = KINDS,
    seed: int = 0,
    num_classes: int | None = None,
    cache: FeatureCache | str | Path | None = None,
    cache_tag: str | None = None,
    trainer: TrainerFactory | None = None,
    gradient_clip_val: float | None = None,
    device: torch.device | str | None = None,
    calibrate: bool = True,
    layer: str | None = None,
) -> FittedHeads:
    """Train the stage-2 heads ``kinds`` (of ``models.stage2.KINDS``: ``introspective``,
    ``control`` on ``h``, ``control_hp`` on ``[h, p]``) on a frozen ``backbone``: a
    ``Backbone`` or any trained ``nn.Module`` classifier of images, whose head is the
    ``nn.Linear`` at the attribute path ``layer`` (e.g. ``"fc"``) or, when ``None``, the last
    one it executes (``backbones.as_backbone``; the returned heads hold the wrapped model).

    ``train``/``val`` are DataLoaders of ``(images, labels)`` (features are extracted from
    them, and cached in ``cache`` under ``cache_tag`` when given) or features already
    extracted (``loader_features``). Each head starts from the random state ``seed`` gives and
    trains for ``head.epochs`` with ``trainer`` (default: ``default_trainer(device)``); ``val``
    is its validation data. With ``calibrate`` and a ``val`` DataLoader, the temperatures of
    the feed-forward network and of every head are fitted on ``val``.
    """
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown stage-2 head kinds {unknown}; choose among {list(KINDS)}")
    if layer is not None or not isinstance(backbone, Backbone):
        backbone = as_backbone(backbone, layer=layer, input_size=_image_shape(train))
    head = head or HeadRecipe()
    features = features or FeatureOptions()
    device = device or next(backbone.parameters()).device
    num_classes = num_classes or int(backbone.head.weight.shape[0])
    backbone.eval().to(device)
    store = FeatureCache(cache) if isinstance(cache, (str, Path)) else cache
    get = {"features": features, "device": device, "cache": store}
    train_f = _as_features(train, backbone, tag=cache_tag and f"{cache_tag}/train", **get)
    val_f = _as_features(val, backbone, tag=cache_tag and f"{cache_tag}/val", **get)
    assert train_f is not None
    todo = [
        _prepare(kind, backbone, train_f, val_f, num_classes=num_classes, head=head,
                 features=features, seed=seed)
        for kind in kinds
    ]  # fmt: skip
    with warnings.catch_warnings():
        # The frozen backbone inside the head is in eval mode on purpose.
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode")
        _train_together(todo, trainer or default_trainer(device), head.epochs, gradient_clip_val)
    heads = {item.head.kind: item.head.eval() for item in todo}
    temperatures: dict[str, float] = {}
    if calibrate and isinstance(val, DataLoader):
        temperatures = fit_head_temperatures(backbone, heads, val, device=device)
    return FittedHeads(backbone, heads, temperatures)


def stage2(
    settings: Stage2Settings,
    dm: ImageDataModule,
    backbone: torch.nn.Module,
    run_dir: Path,
    trainer: TrainerFactory,
    device: torch.device | str = "cpu",
) -> dict[str, StageTwoClassifier]:
    """A run's stage 2: the features of its data recipe (cached), then ``fit_heads``.

    Heads are saved to ``<run>/stage2/<kind>.pt`` (by rank zero); validation uses the clean
    ``val`` split unless ``val`` is part of the training recipe. Every process holds the whole
    training features in memory; each process trains on its share of the batches. With
    ``settings.resume`` a head saved before an interruption is loaded, not trained again.
    """
    backbone.eval().to(device)  # extraction runs on the run's device
    cache = FeatureCache(settings.cache_dir)
    digest = weights_digest(backbone)
    if broadcast_from_zero(digest) != digest:
        raise RuntimeError(
            f"the backbone's weights on process {global_rank()} differ from rank zero's; every "
            "process must build the same backbone (same run.seed or backbone.checkpoint)"
        )
    recipes = settings.data.recipes()
    counts = [len(dm.split(split)) for split, _, _ in recipes]  # type: ignore[arg-type]
    train: dict[str, torch.Tensor] = {}  # every recipe's rows loaded into one tensor per field
    get = {"settings": settings, "cache": cache, "digest": digest, "device": device}
    for recipe, offset in zip(recipes, [sum(counts[:i]) for i in range(len(counts))], strict=True):
        split_features(dm, backbone, *recipe, out=train, offset=offset, total=sum(counts), **get)
    val = None
    if "val" not in settings.data.splits and len(dm.split("val")) > 0:  # type: ignore[arg-type]
        val = split_features(dm, backbone, "val", **get)
    kinds = ["introspective"] + (["control"] if settings.control else [])
    kinds += ["control_hp"] if settings.control_hp else []
    out_dir = run_dir / "stage2"
    if is_global_zero():
        out_dir.mkdir(exist_ok=True)
    heads: dict[str, StageTwoClassifier] = {}
    for kind in kinds:
        path = out_dir / f"{kind}.pt"
        if settings.resume and broadcast_from_zero(path.is_file()):
            # Trained before the run was interrupted (heads are written whole, atomically).
            heads[kind] = load_head(
                kind, backbone, path, dm.num_classes, head=settings.head, features=settings.features
            )
    fitted = fit_heads(
        backbone, train, val, head=settings.head, features=settings.features,
        kinds=[k for k in kinds if k not in heads], seed=settings.seed,
        num_classes=dm.num_classes, trainer=trainer,
        gradient_clip_val=settings.gradient_clip_val, device=device, calibrate=False,
    )  # fmt: skip
    for kind, model in fitted.heads.items():
        if is_global_zero():
            _save_atomic(model.head_state(), out_dir / f"{kind}.pt")
        heads[kind] = model
    return {kind: heads[kind] for kind in kinds}


def _save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` so that readers see no file or the complete one."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def load_head(
    kind: str,
    backbone: torch.nn.Module,
    path: Path,
    num_classes: int,
    *,
    head: HeadRecipe,
    features: FeatureOptions,
) -> StageTwoClassifier:
    """The head saved at ``path``; ``PipelineError`` naming the file when it is unreadable
    (corrupt, truncated) or does not fit this run's head (other shapes or keys)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = build_head(
            kind, backbone, state["feature_mean"].shape[0], num_classes,
            head=head, features=features,
        )  # fmt: skip
        model.load_head_state(state)
    except Exception as err:  # torch and pickle raise many kinds for a damaged file
        text = " ".join(str(err).split())[:200]
        raise PipelineError(
            f"stage-2 head {path} cannot be loaded ({type(err).__name__}: {text}); delete it "
            "and continue with run.resume=true to train it again (a finished run: restore the "
            "file or redo the run with run.overwrite=true)"
        ) from None
    return model.eval()


def load_heads(
    backbone: torch.nn.Module,
    run_dir: Path,
    num_classes: int,
    *,
    head: HeadRecipe,
    features: FeatureOptions,
) -> dict[str, StageTwoClassifier]:
    """The stage-2 heads saved in ``<run>/stage2/`` (none when stage 2 was switched off)."""
    heads: dict[str, StageTwoClassifier] = {}
    for kind in KINDS:
        path = run_dir / "stage2" / f"{kind}.pt"
        if path.is_file():
            heads[kind] = load_head(kind, backbone, path, num_classes, head=head, features=features)
    return heads
