"""The active-learning job (``active.enabled``): config -> data + backbone -> the rounds of
``active.loop`` -> ``active.json``, ``active.md`` and ``active.png`` in the run directory."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from introspect.active.loop import Schedule, run_curves
from introspect.active.pool import LabelPool, batch_outputs, initial_indices, shard_indices
from introspect.backbones import Backbone
from introspect.config.schema import ActiveConfig, Stage1Config
from introspect.data import ImageDataModule
from introspect.data.images import TransformDataset
from introspect.data.seeding import derive_seed
from introspect.gradients import extract
from introspect.jobs.job import Job, JobSettings, run_job
from introspect.jobs.settings import train_settings
from introspect.metrics import ExpectedCalibrationError
from introspect.models.feedforward import FeedForwardClassifier
from introspect.models.stage2 import IntrospectiveClassifier
from introspect.report.active_report import curve_plot, table_markdown, table_two
from introspect.runs.distributed import (
    gather_from_all,
    global_rank,
    launch,
    world_size,
)
from introspect.runs.integrity import write_sealed
from introspect.runs.provenance import results_header
from introspect.runs.rundir import check_run_dir
from introspect.runs.trainer import build_trainer, resolve_device
from introspect.stages.heads import build_head
from introspect.stages.options import FeatureOptions, HeadRecipe, Stage1Options
from introspect.stages.recipes import Recipe
from introspect.stages.stage1 import build_backbone, build_data, stage1_recipe
from introspect.uncertainty.mc_dropout import MCDropout


class ActiveError(RuntimeError):
    """An active-learning run that cannot proceed as configured; the message names the fix."""


@dataclass
class Models:
    """One round's classifiers: stage 1 and the introspective head on it."""

    backbone: Backbone
    head: IntrospectiveClassifier


@dataclass(frozen=True)
class ActiveSettings:
    """What the active-learning job reads from a validated configuration: the ``active`` and
    ``stage1`` sections, stage 1's resolved recipe, the introspective head's features and
    recipe, and the plain values of ``stage2``, ``data``, ``eval`` and ``run`` it uses."""

    job: JobSettings
    options: Stage1Options
    active: ActiveConfig
    stage1: Stage1Config
    recipe: Recipe
    features: FeatureOptions
    head: HeadRecipe
    stage2_augment: str
    seed: int
    split_seed: int
    batch_size: int
    n_bins: int
    resume: bool

    @classmethod
    def from_config(cls, cfg: DictConfig) -> ActiveSettings:
        """The settings of ``cfg`` (a validated configuration)."""
        t = train_settings(cfg)
        return cls(
            job=t.job,
            options=t.stage1,
            active=OmegaConf.to_object(cfg.active),  # type: ignore[arg-type]
            stage1=t.stage1.stage1,
            recipe=stage1_recipe(t.stage1),
            features=t.stage2.features,
            head=t.stage2.head,
            stage2_augment=cfg.stage2.augment,
            seed=cfg.run.seed,
            split_seed=cfg.data.split_seed,
            batch_size=cfg.data.batch_size,
            n_bins=cfg.eval.n_bins,
            resume=bool(cfg.run.resume),
        )


class RunLearner:
    """Training, pool scoring and evaluation of an active run, as ``active.loop`` asks for them.

    Every process scores and evaluates its contiguous block of the images and gets everyone's
    outputs (``gather_from_all``), so each image passes through the backbone once per call.
    ``backbone`` builds stage 1's untrained network; ``trainer(epochs)`` a quiet Lightning
    trainer for one fit.
    """

    def __init__(
        self,
        settings: ActiveSettings,
        dm: ImageDataModule,
        device: torch.device,
        test: Dataset,
        *,
        backbone: Callable[[], Backbone],
        trainer: Callable[[int], L.Trainer],
    ) -> None:
        self.settings, self.dm, self.device = settings, dm, device
        self._build_backbone, self._build_trainer = backbone, trainer
        a = settings.active
        self.mc = MCDropout(a.mc_samples, a.mc_p, seed=derive_seed(settings.seed, "mc"))
        images, labels = _stack(test)
        gen = torch.Generator().manual_seed(a.noise_seed)
        noisy = (images + a.noise_std * torch.randn(images.shape, generator=gen)).clamp(0, 1)
        self.test = {"clean": images, "noisy": noisy}
        self.test_labels = labels
        self.backbone_passes = 0  # images sent through the backbone (for the cost check)

    def new_backbone(self) -> Backbone:
        """Stage 1's initial weights (the same in every round and curve for a seed)."""

        L.seed_everything(self.settings.seed, workers=True, verbose=False)
        return self._build_backbone()

    def fit(self, pool: LabelPool, previous: Models | None, tag: str) -> Models:
        """Stage 1, then the introspective head, trained on the pool's labelled images."""

        s = self.settings
        if previous is not None and s.active.warm_start:
            backbone = copy.deepcopy(previous.backbone)
        else:
            backbone = self.new_backbone()
        for p in backbone.parameters():
            p.requires_grad_(True)
        L.seed_everything(derive_seed(s.seed, tag, "stage1"), workers=True, verbose=False)
        model = FeedForwardClassifier(
            backbone,
            num_classes=self.dm.num_classes,
            optim=dataclasses.asdict(s.stage1.optim),
            label_smoothing=s.stage1.label_smoothing,
            adversarial=dataclasses.asdict(s.stage1.adversarial)
            | {"enabled": s.recipe.adversarial},
            jsd_weight=s.stage1.augmix_jsd,
        )
        labelled = pool.labelled_dataset()
        train: Dataset = labelled
        if self.dm.train_transform is not None:
            train = TransformDataset(labelled, self.dm.train_transform)
        loader = self.dm.loader(train, shuffle=True, batch_size=s.batch_size)
        trainer = self._build_trainer(s.stage1.epochs)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*(num_workers|train_dataloader|log_every)")
            warnings.filterwarnings("ignore", message=r".*`validation_step` but have no")
            trainer.fit(model, train_dataloaders=loader)
        backbone.eval().to(self.device)

        opts = s.features.extraction()
        feats, labels = [], []
        for images, y in self.dm.loader(labelled, batch_size=s.active.batch_size):
            with torch.no_grad():
                raw = extract(
                    backbone,
                    images.to(self.device),
                    head=backbone.head,
                    **opts,
                )
            feats.append(raw.cpu())
            labels.append(y)
        x, y = torch.cat(feats), torch.cat(labels)
        L.seed_everything(derive_seed(s.seed, tag, "head"), workers=True, verbose=False)
        head = build_head(
            "introspective", backbone, x.shape[1], self.dm.num_classes,
            head=s.head, features=s.features,
        )  # fmt: skip
        assert isinstance(head, IntrospectiveClassifier)
        head.fit_standardizer(x)
        head_loader = DataLoader(TensorDataset(x, y), batch_size=s.head.batch_size, shuffle=True)
        trainer = self._build_trainer(s.head.epochs)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*(module\(s\) in eval mode|num_workers)")
            warnings.filterwarnings("ignore", message=r".*(train_dataloader|log_every)")
            warnings.filterwarnings("ignore", message=r".*`validation_step` but have no")
            trainer.fit(head, train_dataloaders=head_loader)
        head.eval().to(self.device)
        backbone.eval().to(self.device)
        return Models(backbone, head)

    def restore(self, state: dict[str, Any]) -> Models:
        """The models that ``state`` (from ``models_state``) holds, ready to score."""
        backbone = self.new_backbone()
        backbone.load_state_dict(state["backbone"])
        head = build_head(
            "introspective", backbone, int(state["in_dim"]), self.dm.num_classes,
            head=self.settings.head, features=self.settings.features,
        )  # fmt: skip
        assert isinstance(head, IntrospectiveClassifier)
        head.load_head_state(state["head"])
        head.eval().to(self.device)
        backbone.eval().to(self.device)
        return Models(backbone, head)

    def _sharded(
        self, models: Models, images: Dataset, *, mc: bool, key: str
    ) -> dict[str, torch.Tensor]:
        """``batch_outputs`` of every image of ``images``: this process's block, gathered."""
        n = len(images)  # type: ignore[arg-type]
        block = shard_indices(n, global_rank(), world_size())
        parts: list[dict[str, torch.Tensor]] = []
        size = self.settings.active.batch_size
        loader = self.dm.loader(Subset(images, block), batch_size=size)
        for start, batch in zip(range(block.start, block.stop, size), loader, strict=True):
            batch = batch.to(self.device)
            self.backbone_passes += len(batch)
            parts.append(
                batch_outputs(
                    models.backbone,
                    models.head,
                    batch,
                    mc=self.mc if mc else None,
                    key=derive_seed(key, start),
                )
            )
        mine = {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}
        gathered = [g for g in gather_from_all(mine) if g]
        return {k: torch.cat([g[k] for g in gathered]) for k in gathered[0]}

    def outputs(self, models: Models, pool: LabelPool, *, mc: bool, key: str) -> dict[str, Any]:
        """Outputs of both classifiers for every unlabelled pool image (one backbone pass)."""
        return self._sharded(models, pool.unlabelled_images(), mc=mc, key=key)

    def evaluate(self, models: Models) -> dict[str, dict[str, dict[str, float]]]:
        """Accuracy and ECE of both heads on the clean and the noisy test split."""
        out: dict[str, dict[str, dict[str, float]]] = {"feedforward": {}, "introspective": {}}
        for split, images in self.test.items():
            outs = self._sharded(models, _TensorImages(images), mc=False, key=split)
            for head, prefix in (("feedforward", "ff"), ("introspective", "int")):
                probs = outs[f"{prefix}_logits"].double().softmax(-1)
                ece = ExpectedCalibrationError(self.settings.n_bins)
                ece.update(probs, self.test_labels)
                acc = (probs.argmax(-1) == self.test_labels).double().mean()
                out[head][split] = {"acc": float(acc), "ece": float(ece.compute())}
        return out


def models_state(models: Models) -> dict[str, Any]:
    """Weights of both classifiers on the CPU (what ``RunLearner.restore`` reads)."""
    return {
        "backbone": {k: v.detach().cpu() for k, v in models.backbone.state_dict().items()},
        "head": {k: v.detach().cpu() for k, v in models.head.head_state().items()},
        "in_dim": int(models.head.feature_mean.numel()),
    }


class RoundStore:
    """The ``active.loop.Progress`` of a run: one file per learning curve (and one for round 0)
    under ``<run>/active_rounds/``, holding its finished rounds' records and the weights of the
    last one, replaced atomically after every round and read back only on ``run.resume``
    (``weights_only``: tensors and plain values, nothing imported). Only rank zero writes."""

    def __init__(self, folder: Path, learner: RunLearner, *, resume: bool, write: bool) -> None:
        self.folder, self.learner, self.resume, self.write = folder, learner, resume, write
        self.restored: list[str] = []

    def _path(self, key: str) -> Path:
        return self.folder / (key.replace("/", "-") + ".pt")

    def load(self, key: str) -> tuple[list[dict[str, Any]], Models] | None:
        """The recorded rounds of ``key`` and their last models (``None`` unless resuming)."""
        path = self._path(key)
        if not (self.resume and path.is_file()):
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.restored.append(key)
        return state["rounds"], self.learner.restore(state["models"])

    def save(self, key: str, rounds: list[dict[str, Any]], models: Models) -> None:
        """Record ``rounds`` of ``key`` and the models of the last one."""
        if not self.write:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(key)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"rounds": rounds, "models": models_state(models)}, tmp)
        os.replace(tmp, path)


class _TensorImages(Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def _subset(dataset: Dataset, size: int, *, seed: int, name: str) -> Dataset:
    """``size`` images of ``dataset`` drawn with ``seed`` (in dataset order); all of it for 0."""
    n = len(dataset)  # type: ignore[arg-type]
    split = "train" if name == "pool" else name
    if size == 0 or size == n:
        return dataset
    if size > n:
        raise ActiveError(
            f"active.{name}_size={size} but the {split} split holds {n} images; lower it "
            "(0 = all of it)"
        )
    gen = torch.Generator().manual_seed(derive_seed(seed, "active", name))
    return Subset(dataset, sorted(torch.randperm(n, generator=gen)[:size].tolist()))


def _stack(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    loader = DataLoader(dataset, batch_size=512)
    images, labels = zip(*loader, strict=True)
    return torch.cat(images), torch.cat(labels)


def check_active(settings: ActiveSettings, pool_size: int) -> Schedule:
    """The schedule of ``settings.active``; ``ActiveError`` naming the fix when it cannot run."""
    a = settings.active
    if not a.strategies:
        raise ActiveError("active.strategies is empty; name at least one acquisition function")
    if not a.sources and any(s != "random" for s in a.strategies):
        raise ActiveError("active.sources is empty; use feedforward and/or introspective")
    schedule = Schedule(a.initial, a.per_round, a.rounds)
    need = a.initial + a.per_round * a.rounds
    if need > pool_size:
        raise ActiveError(
            f"the schedule labels {need} images (active.initial + active.per_round x "
            f"active.rounds) but the pool (the train split) holds {pool_size}; lower one of them"
        )
    if settings.features.per_class or settings.stage2_augment != "none":
        raise ActiveError(
            "active runs train the introspective head on the labelled images' plain features; "
            "set stage2.augment=none and stage2.features.per_class=false"
        )
    return schedule


def _flat(strategy: str, source: str, entry: dict[str, Any]) -> dict[str, float]:
    flat = {"active/labelled": float(entry["labelled"])}
    for head, splits in entry["metrics"].items():
        for split, metrics in splits.items():
            for m, v in metrics.items():
                flat[f"active/{strategy}/{source}/{head}/{split}/{m}"] = v
    return flat


def run_active(settings: ActiveSettings) -> dict[str, Any]:
    """Run the active-learning job of ``settings`` (``ActiveSettings.from_config``) and return
    what ``active.json`` holds.

    Data, schedule and backbone are checked before any training; ``status.json`` follows the run
    like the two-stage job's (``jobs.job``). Only rank zero writes.
    """
    started = time.perf_counter()
    check_run_dir(settings.job.run, settings.job.config)
    L.seed_everything(settings.seed, workers=True, verbose=False)
    if settings.recipe.contrastive:
        raise ActiveError(
            f"stage1.recipe={settings.stage1.recipe} (SimCLR pre-training) is not available in "
            "active learning; pick another stage1.recipe"
        )
    dm = build_data(settings.options)
    a, split_seed = settings.active, settings.split_seed
    train = _subset(dm.split("train"), a.pool_size, seed=split_seed, name="pool")
    test = _subset(dm.split("test"), a.test_size, seed=split_seed, name="test")
    schedule = check_active(settings, len(train))  # type: ignore[arg-type]
    build_backbone(settings.options, dm.num_classes, dm.image_shape)  # class counts checked first
    launch(settings.job.trainer, settings.job.run)
    device = resolve_device(settings.job.trainer.accelerator)
    # Dozens of short fits: Lightning's per-fit notices would bury the per-round lines.
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)
    try:
        with run_job(settings.job, started=started) as job, job.stage("active"):

            def trainer(epochs: int) -> L.Trainer:
                return build_trainer(
                    settings.job.trainer,
                    job.run_dir,
                    max_epochs=epochs,
                    enable_progress_bar=False,
                    enable_checkpointing=False,
                    num_sanity_val_steps=0,
                )

            backbone = partial(build_backbone, settings.options, dm.num_classes, dm.image_shape)
            learner = RunLearner(settings, dm, device, test, backbone=backbone, trainer=trainer)
            curves, initial, store = _run_curves(settings, learner, train, schedule, job)
            header = results_header(
                job.settings.run.name,  # type: ignore[union-attr]
                job.settings.config,  # type: ignore[union-attr]
                device=device,
                world_size=world_size(),
                seed=settings.seed,
                started=started,
                pool_size=len(train),  # type: ignore[arg-type]
                initial=initial,
                backbone_images_per_process=learner.backbone_passes,
                restored=store.restored,
            )
            results = {"run": header, "curves": curves, "table": table_two(curves)}
            if job.write:
                _report(results, job.run_dir, job.loggers)
    finally:
        lightning_log.setLevel(level)
    return results


def _run_curves(
    settings: ActiveSettings, learner: RunLearner, train: Dataset, schedule: Schedule, job: Job
) -> tuple[list[dict[str, Any]], list[int], RoundStore]:
    """Every learning curve of the run (continued from ``active_rounds`` on ``run.resume``),
    the round-0 labelled indices and the store that recorded the rounds."""
    a = settings.active
    store = RoundStore(
        job.run_dir / "active_rounds", learner, resume=settings.resume, write=job.write
    )
    initial = initial_indices(
        len(train),  # type: ignore[arg-type]
        a.initial,
        seed=derive_seed(settings.seed, "initial"),
    )
    curves = run_curves(
        learner,
        LabelPool(train, initial),
        schedule,
        list(a.strategies),
        list(a.sources),
        seed=settings.seed,
        on_round=RoundLog(job.loggers, verbose=job.write),
        progress=store,
    )
    return curves, initial, store


class RoundLog:
    """The ``on_round`` of ``run_curves``: logs every finished round's metrics to ``loggers``
    and, when ``verbose``, prints one line per round."""

    def __init__(self, loggers: list[Logger], *, verbose: bool) -> None:
        self.loggers, self.verbose, self.step = loggers, verbose, 0

    def __call__(self, strategy: str, source: str, entry: dict[str, Any]) -> None:
        """Log and print the round ``entry`` of ``strategy``/``source``."""
        for logger in self.loggers:
            logger.log_metrics(_flat(strategy, source, entry), step=self.step)
        self.step += 1
        if self.verbose:
            m = entry["metrics"]
            print(
                f"active {strategy}/{source} round {entry['round']} "
                f"({entry['labelled']} labelled): FF {m['feedforward']['clean']['acc']:.3f}"
                f" INT {m['introspective']['clean']['acc']:.3f} (clean)",
                flush=True,
            )


def _report(results: dict[str, Any], run_dir: Path, loggers: list[Logger]) -> None:
    """``active.md`` and ``active.png``, logged; ``active.json`` last and atomically."""
    from lightning.pytorch.loggers import WandbLogger

    text = table_markdown(results["table"])
    (run_dir / "active.md").write_text(text + "\n")
    plot = run_dir / "active.png"
    curve_plot(results["curves"], plot)
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key="active/curves", images=[str(plot)])
        logger.save()
    write_sealed(run_dir / "active.json", results, run_dir)
    print(text)
