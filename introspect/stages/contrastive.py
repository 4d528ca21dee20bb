"""SimCLR pre-training of a run's stage-1 trunk (recipe ``simclr``), resumable, before the
classifier head is trained on top (``runs.stage1``)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader

from introspect.backbones import Backbone
from introspect.data import ImageDataModule
from introspect.data.views import SimCLRAugment, TwoViews
from introspect.models.contrastive import SimCLRPretraining
from introspect.runs.distributed import broadcast_from_zero, is_global_zero
from introspect.runs.status import mark_stage_done, stages_done
from introspect.runs.trainer import build_trainer
from introspect.stages.options import Stage1Options


def contrastive_loader(dm: ImageDataModule, augment: SimCLRAugment) -> DataLoader:
    """Shuffled batches ``(view_1, view_2)`` of the train split (incomplete last batch dropped:
    NT-Xent needs at least two pairs)."""
    s = dm.settings
    return DataLoader(
        TwoViews(dm.split("train"), augment),
        batch_size=s.batch_size,
        shuffle=True,
        drop_last=len(dm.split("train")) > s.batch_size,  # type: ignore[arg-type]
        num_workers=s.num_workers,
        pin_memory=s.pin_memory,
        persistent_workers=s.num_workers > 0,
    )


def pretrain_contrastive(
    options: Stage1Options,
    dm: ImageDataModule,
    backbone: Backbone,
    run_dir: Path,
    loggers: list[Logger],
    *,
    name: str = "stage1-simclr",
    callbacks: list[Callback] | None = None,
) -> SimCLRPretraining:
    """Train ``backbone``'s trunk with SimCLR (``options.stage1.simclr``) in place; its last
    state is ``<run>/checkpoints/<name>-last.ckpt``. With ``options.resume`` a finished
    pre-training (stage ``name`` done) is loaded instead, an interrupted one continued."""
    s = options.stage1.simclr
    model = SimCLRPretraining(
        backbone,
        projection_dim=s.projection_dim,
        temperature=s.temperature,
        optim=asdict(s.optim),
        channels_last=options.trainer.channels_last,
    )
    last = run_dir / "checkpoints" / f"{name}-last.ckpt"
    if options.resume and name in broadcast_from_zero(stages_done(run_dir)):
        state = torch.load(last, map_location="cpu", weights_only=True)
        model.load_state_dict(state["state_dict"])
        return model
    ckpt = ModelCheckpoint(
        dirpath=str(last.parent), save_last=True, save_top_k=0, enable_version_counter=False
    )
    ckpt.CHECKPOINT_NAME_LAST = f"{name}-last"
    trainer = build_trainer(
        options.trainer,
        run_dir,
        loggers=loggers,
        callbacks=[ckpt, *(callbacks or [])],
        max_epochs=s.epochs,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    resume_from = str(last) if options.resume and broadcast_from_zero(last.is_file()) else None
    augment = SimCLRAugment(min_scale=s.min_scale, strength=s.jitter)
    trainer.fit(model, train_dataloaders=contrastive_loader(dm, augment), ckpt_path=resume_from)
    if is_global_zero():
        mark_stage_done(run_dir, name)
    return model
