"""Stage 1 of a run: the data module, the backbone (checked against the data) and the
feed-forward classifier, trained here (resumable) or loaded from ``backbone.checkpoint``."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from torch import Tensor
from torchvision import transforms as T

from introspect.backbones import Backbone, load_backbone
from introspect.backbones.checkpoint import load_into_backbone, load_state_dict_file
from introspect.backbones.denoising import add_denoising_blocks
from introspect.backbones.protopnet import is_protopnet
from introspect.config.schema import BackboneConfig
from introspect.data import ImageDataModule, build_augmentation, build_datamodule
from introspect.data.augment import AugMixTriplet
from introspect.data.device import DEVICE_AUGMENTATIONS, DeviceBatches, load_split
from introspect.data.sources import check_classes_occur
from introspect.models.feedforward import FeedForwardClassifier
from introspect.runs.distributed import broadcast_from_zero
from introspect.runs.errors import PipelineError
from introspect.runs.status import stages_done
from introspect.runs.trainer import build_trainer, resolve_device
from introspect.stages.contrastive import pretrain_contrastive
from introspect.stages.options import Stage1Options
from introspect.stages.protopnet import protopnet_stage1
from introspect.stages.recipes import Recipe, resolve_recipe


def stage1_recipe(options: Stage1Options) -> Recipe:
    """What ``stage1.recipe`` trains with (checked against ``augment``/``adversarial``)."""
    s = options.stage1
    return resolve_recipe(s.recipe, s.augment, bool(s.adversarial.enabled))


def build_data(options: Stage1Options) -> ImageDataModule:
    """The datamodule of ``options.data``, set up, with stage 1's training augmentation (the
    recipe's augmentations, applied in order). The labels of an ``npz`` source must not imply
    classes that never occur unless ``data.num_classes`` says that many (``DataError``)."""
    recipe = stage1_recipe(options)  # a bad recipe fails before the data is read
    data, s = options.data, options.stage1
    if data.on_device:
        _check_on_device(options, recipe)
    dm = build_datamodule(data)
    dm.setup()
    if data.source == "npz":  # a stray label would make a run of classes never seen
        check_classes_occur(dm.source_labels(), data.num_classes, str(data.path))
    steps = [
        build_augmentation(
            name,
            image_size=dm.image_shape[-1],
            noise_std=s.noise_std,
            augmix_severity=s.augmix_severity,
        )
        for name in recipe.augment
    ]
    transforms = [t for t in steps if t is not None]
    if s.augmix_jsd > 0:
        if "augmix" not in recipe.augment or recipe.adversarial:
            raise PipelineError(
                f"stage1.augmix_jsd={s.augmix_jsd} needs AugMix without PGD training "
                f"(stage1.recipe={s.recipe}); set stage1.augmix_jsd=0 or "
                "stage1.recipe=augmix"
            )
        k = recipe.augment.index("augmix")
        transforms = [AugMixTriplet(transforms[k], _compose(transforms[:k]))]
    dm.train_transform = _compose(transforms)
    return dm


def _compose(transforms: list[Callable[[Tensor], Tensor]]) -> Callable[[Tensor], Tensor] | None:
    if not transforms:
        return None
    return transforms[0] if len(transforms) == 1 else T.Compose(transforms)


def _check_on_device(options: Stage1Options, recipe: Recipe) -> None:
    off = [a for a in recipe.augment if a not in DEVICE_AUGMENTATIONS]
    if recipe.contrastive:
        off.append("SimCLR views")
    if off:
        raise PipelineError(
            f"data.on_device=true applies only {', '.join(DEVICE_AUGMENTATIONS)} on the device, "
            f"not {', '.join(off)} (stage1.recipe={options.stage1.recipe}); "
            "set data.on_device=false"
        )
    if options.trainer.devices not in (1, "1") or options.trainer.num_nodes != 1:
        raise PipelineError(
            "data.on_device=true trains in one process; set trainer.devices=1 and "
            "trainer.num_nodes=1, or data.on_device=false"
        )


def build_backbone(
    options: Stage1Options, num_classes: int, image_shape: tuple[int, int, int]
) -> Backbone:
    """The stage-1 network of ``options.backbone``; its output count must match the data's
    classes."""
    b = options.backbone
    denoise = stage1_recipe(options).denoise
    if b.num_classes is not None and b.num_classes != num_classes:
        raise PipelineError(
            f"backbone.num_classes={b.num_classes} but the data ({options.data.source}) has "
            f"{num_classes} classes; remove backbone.num_classes or pick matching data"
        )
    backbone = load_backbone(
        b.name,
        None if denoise else b.checkpoint,  # denoising blocks first, then the weights
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
    if denoise:
        try:
            add_denoising_blocks(
                backbone.net,
                torch.zeros(1, *backbone.input_size),
                operation=options.stage1.denoise.operation,
                embed=options.stage1.denoise.embed,
                stages=options.stage1.denoise.stages,
            )
        except ValueError as err:
            raise PipelineError(f"stage1.recipe=denoising: {err}") from None
        if b.checkpoint is not None:
            state = load_state_dict_file(b.checkpoint, trust=b.trust_checkpoint)
            load_into_backbone(backbone, state, source=f"checkpoint {b.checkpoint!r}")
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


def _fit_feedforward(
    trainer: L.Trainer,
    model: FeedForwardClassifier,
    dm: ImageDataModule,
    resume_from: str | None,
    *,
    on_device: torch.device | None,
    batch_size: int,
    augment: tuple[str, ...],
    noise_std: float,
) -> None:
    """Fit ``model`` on ``dm``'s train split (validated on its val split), from the checkpoint
    ``resume_from`` when given; with ``on_device``, from the whole split held on that device
    and augmented there in batches of ``batch_size``."""
    if on_device is None:
        trainer.fit(model, datamodule=dm, ckpt_path=resume_from)
        return
    images, labels = load_split(dm.split("train"), on_device)
    batches = DeviceBatches(
        images, labels, batch_size=batch_size, augment=augment, noise_std=noise_std
    )
    trainer.fit(
        model,
        train_dataloaders=batches,
        val_dataloaders=dm.val_dataloader(),
        ckpt_path=resume_from,
    )


def stage1(
    options: Stage1Options,
    dm: ImageDataModule,
    backbone: Backbone,
    run_dir: Path,
    loggers: list[Logger],
    *,
    name: str = "stage1",
) -> FeedForwardClassifier:
    """Train the feed-forward classifier of ``options`` unless ``backbone.checkpoint`` is set;
    return it.

    Training keeps the best (by validation accuracy) and the last checkpoint under
    ``<run>/checkpoints`` (``<name>-best.ckpt``, ``<name>-last.ckpt``) and continues with the
    best weights. With ``options.resume`` training continues from the last checkpoint (weights,
    optimizer, schedule, epoch, random states), or is skipped when the run finished ``name``.
    """
    recipe = stage1_recipe(options)
    s = options.stage1
    trains = options.backbone.checkpoint is None and not is_protopnet(backbone)
    if trains and recipe.contrastive:  # the trunk first, then the head on top
        pretrain_contrastive(
            options,
            dm,
            backbone,
            run_dir,
            loggers,
            name=f"{name}-simclr",
            callbacks=[RandomStates()],
        )
    model = FeedForwardClassifier(
        backbone,
        num_classes=dm.num_classes,
        optim=asdict(s.optim),
        label_smoothing=s.label_smoothing,
        adversarial=asdict(s.adversarial) | {"enabled": recipe.adversarial},
        freeze_trunk=recipe.contrastive and not s.simclr.finetune,
        channels_last=options.trainer.channels_last,
        jsd_weight=s.augmix_jsd,
    )
    if options.backbone.checkpoint is not None:
        return model
    if is_protopnet(backbone):
        protopnet_stage1(options, dm, backbone, run_dir, loggers)
        return model
    best = run_dir / "checkpoints" / f"{name}-best.ckpt"
    finished = options.resume and name in broadcast_from_zero(stages_done(run_dir))
    if not finished:
        best = _train(options, model, dm, run_dir, loggers, name=name, recipe=recipe) or best
    if best.is_file():
        state = torch.load(best, map_location="cpu", weights_only=True)
        model.load_state_dict(state["state_dict"])
    elif finished:
        raise PipelineError(f"{best} is missing; the run cannot be resumed, only overwritten")
    backbone.requires_grad_(True)  # a frozen trunk is frozen for stage-1 training only
    return model


def _train(
    options: Stage1Options,
    model: FeedForwardClassifier,
    dm: ImageDataModule,
    run_dir: Path,
    loggers: list[Logger],
    *,
    name: str,
    recipe: Recipe,
) -> Path | None:
    """Fit ``model`` (continuing ``<run>/checkpoints/<name>-last.ckpt`` when resuming); return
    its best checkpoint (None when none was kept)."""
    folder = run_dir / "checkpoints"
    last = folder / f"{name}-last.ckpt"
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
        options.trainer,
        run_dir,
        loggers=loggers,
        callbacks=[ckpt, RandomStates()],
        max_epochs=options.stage1.epochs,
    )
    resume_from = str(last) if options.resume and broadcast_from_zero(last.is_file()) else None
    with warnings.catch_warnings():
        # The SimCLR pre-training and ensemble members share the folder, by design.
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* not empty")
        on_device = resolve_device(options.trainer.accelerator) if options.data.on_device else None
        _fit_feedforward(
            trainer, model, dm, resume_from, on_device=on_device,
            batch_size=options.data.batch_size, augment=recipe.augment,
            noise_std=options.stage1.noise_std,
        )  # fmt: skip
    return Path(ckpt.best_model_path) if ckpt.best_model_path else None


def stage1_checkpoint(backbone: BackboneConfig, run_dir: Path) -> str | None:
    """The weights the finished run in ``run_dir`` restores its backbone from (configured in
    ``backbone`` or trained here)."""
    if backbone.checkpoint is not None:
        return str(backbone.checkpoint)
    best = run_dir / "checkpoints" / "stage1-best.ckpt"
    if best.is_file():
        return str(best)
    last = run_dir / "checkpoints" / "stage1-last.ckpt"
    return str(last) if last.is_file() else None
