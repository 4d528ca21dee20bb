"""The calibration and uncertainty baselines of a run, beside introspection: temperature scaling
of every head on the calibration split, MC dropout of the feed-forward network and a deep
ensemble of stage-1 networks (trained here with ``stage1.ensemble=K`` or loaded from
``backbone.ensemble_checkpoints``).

A head is tempered only on data it was not trained on: not on a split listed in
``stage2.splits`` (the stage-2 heads), not on the train split when stage 1 was trained here
(the feed-forward network). A released checkpoint's training data is unknown to the run: hold
the calibration split out of images it never saw (``data.val_from=test`` for a network trained
on the whole training set).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from introspect.data import ImageDataModule
from introspect.data.seeding import derive_seed
from introspect.metrics.temperature import fit_temperature
from introspect.models.stage2 import StageTwoClassifier, freeze
from introspect.runs.distributed import broadcast_from_zero, is_global_zero
from introspect.runs.errors import PipelineError
from introspect.stages.evaluation import head_logits
from introspect.stages.stage1 import build_backbone, stage1
from introspect.uncertainty import MCDropout


def member_checkpoint_name(k: int) -> str:
    """Checkpoint name stem of the ``k``-th stage-1 member (``k >= 2``; member 1 is the run's
    own ``stage1``)."""
    return f"stage1-member{k}"


def member_seed(run_seed: int, k: int) -> int:
    """The seed that initializes and trains the ``k``-th stage-1 member."""
    return derive_seed(run_seed, "stage1-ensemble-member", k)


@dataclass
class Baselines:
    """What the evaluation needs for the baseline heads, and what the run records about them."""

    temperatures: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    mc_dropout: MCDropout | None = None
    ensemble: list[nn.Module] = field(default_factory=list)
    ensemble_with_backbone: bool = True
    ensemble_members: list[str] = field(default_factory=list)

    def evaluator_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``Evaluator`` for these heads."""
        return {
            "temperatures": self.temperatures,
            "mc_dropout": self.mc_dropout,
            "ensemble": self.ensemble,
            "ensemble_with_backbone": self.ensemble_with_backbone,
        }

    def provenance(self) -> dict[str, Any]:
        """Entries of ``results["run"]``: ``temperatures`` (head -> fitted T), ``calibration``
        (split, samples, heads skipped and why) and, with an ensemble, ``ensemble``."""
        out: dict[str, Any] = {
            "temperatures": dict(self.temperatures),
            "calibration": dict(self.calibration),
        }
        if self.ensemble_members:
            out["ensemble"] = {"members": list(self.ensemble_members)}
        return out

    def notes(self) -> list[str]:
        """Human-readable lines: the fitted temperatures and every head left untempered."""
        cal = self.calibration
        lines = []
        if self.temperatures:
            fitted = ", ".join(f"{h} T={t:.4g}" for h, t in self.temperatures.items())
            lines.append(
                f"temperature scaling on the {cal.get('split')} split "
                f"({cal.get('num_samples')} samples): {fitted}"
            )
        for head, reason in cal.get("skipped", {}).items():
            lines.append(f"temperature scaling skipped for {head}: {reason}")
        if self.ensemble_members:
            lines.append("ensemble members: " + "; ".join(self.ensemble_members))
        return lines


def _trained_here(cfg: DictConfig, run_dir: Path) -> bool:
    """Whether the feed-forward network was trained by this run (not a configured checkpoint)."""
    ckpt = cfg.backbone.checkpoint
    if ckpt is None:
        return True
    return Path(str(ckpt)).expanduser().resolve().parent == (run_dir / "checkpoints").resolve()


def calibration_skips(
    cfg: DictConfig, dm: ImageDataModule, head_names: list[str], run_dir: Path
) -> dict[str, str]:
    """``{head: reason}`` for every head of ``["feedforward", *head_names]`` that cannot be
    tempered on ``eval.calibration_split``."""
    split = cfg.eval.calibration_split
    heads = ["feedforward", *head_names]
    if split == "none":
        return {h: "eval.calibration_split=none" for h in heads}
    if len(dm.split(split)) == 0:  # type: ignore[arg-type]
        reason = f"the {split} split is empty, so there is no calibration split"
        if split == "val":
            reason += f" (data.val_fraction={cfg.data.val_fraction})"
        return {h: reason for h in heads}
    skipped: dict[str, str] = {}
    if split == "train" and _trained_here(cfg, run_dir):
        skipped["feedforward"] = "the feed-forward network was trained on the train split"
    for h in head_names:
        if split in cfg.stage2.splits:
            skipped[h] = (
                f"the {h} head was trained on the {split} split "
                f"(stage2.splits={list(cfg.stage2.splits)})"
            )
    return skipped


def fit_temperatures(
    cfg: DictConfig,
    dm: ImageDataModule,
    backbone: nn.Module,
    heads: Mapping[str, StageTwoClassifier],
    run_dir: Path,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, float], dict[str, Any]]:
    """Temperatures of every head that may be tempered, fitted on ``eval.calibration_split``
    with one backbone pass per batch, and the calibration record (split, samples, skipped heads
    with reasons, seconds). Every process computes them on the whole split; rank zero's values
    are used by all."""
    split = cfg.eval.calibration_split
    skipped = calibration_skips(cfg, dm, list(heads), run_dir)
    wanted = [h for h in ["feedforward", *heads] if h not in skipped]
    record: dict[str, Any] = {"split": split, "num_samples": 0, "skipped": skipped}
    if not wanted:
        return {}, record
    started = time.perf_counter()
    dataset = dm.split(split)
    backbone.eval().to(device)
    for head in heads.values():
        head.eval().to(device)
    logits: dict[str, list[torch.Tensor]] = {h: [] for h in wanted}
    labels: list[torch.Tensor] = []
    for images, y in dm.loader(dataset, batch_size=cfg.eval.batch_size):
        out, _ = head_logits(backbone, heads, images.to(device))
        for h in wanted:
            logits[h].append(out[h].detach().cpu())
        labels.append(y)
    target = torch.cat(labels)
    pass_seconds = time.perf_counter() - started
    temperatures: dict[str, float] = {}
    fit_seconds: dict[str, float] = {}
    for h in wanted:
        t0 = time.perf_counter()
        temperatures[h] = fit_temperature(torch.cat(logits[h]), target)
        fit_seconds[h] = round(time.perf_counter() - t0, 4)
    temperatures = broadcast_from_zero(temperatures)
    record |= {
        "num_samples": int(target.numel()),
        "pass_seconds": round(pass_seconds, 2),
        "fit_seconds": fit_seconds,
    }
    return temperatures, record


def _member_config(cfg: DictConfig, name: str | None, checkpoint: str) -> DictConfig:
    """``cfg`` with the backbone replaced by one ensemble member: the same options when the
    member has the run's architecture, the registry's defaults otherwise."""
    member = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    b = member.backbone
    if name is not None and name != b.name:
        b.name = name
        b.mean = b.std = b.head = None
        b.kwargs = {}
        b.cifar_stem = False
    b.checkpoint = checkpoint
    return member


def _label(name: str, checkpoint: str | None) -> str:
    return f"{name} [{Path(checkpoint).name}]" if checkpoint else name


def ensemble_members(
    cfg: DictConfig, dm: ImageDataModule, run_dir: Path, *, train: bool
) -> tuple[list[nn.Module], bool, list[str]]:
    """``(members, with_backbone, labels)``: the stage-1 networks of the ensemble besides the
    run's backbone (eval mode, frozen), whether the run's backbone is a member, and a label per
    member. ``stage1.ensemble=K`` trains members 2..K with their own seeds (``train``) or loads
    them from ``<run>/checkpoints/stage1-member<k>-best.ckpt``; ``backbone.ensemble_checkpoints``
    loads the listed networks (a member equal to the run's backbone reuses its pass)."""

    members: list[nn.Module] = []
    b = cfg.backbone
    if cfg.stage1.ensemble > 1:
        labels = [f"{b.name} [stage1, run.seed={cfg.run.seed}]"]
        for k in range(2, cfg.stage1.ensemble + 1):
            seed = member_seed(cfg.run.seed, k)
            stem = member_checkpoint_name(k)
            if train:
                L.seed_everything(seed, workers=True, verbose=False)
                net = build_backbone(cfg, dm.num_classes, dm.image_shape)
                with warnings.catch_warnings():
                    # Members share <run>/checkpoints with the first network, by design.
                    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* not empty")
                    model = stage1(cfg, dm, net, run_dir, [], name=stem)
                net = model.backbone
            else:
                ckpt = next(
                    (
                        run_dir / "checkpoints" / f"{stem}-{kind}.ckpt"
                        for kind in ("best", "last")
                        if (run_dir / "checkpoints" / f"{stem}-{kind}.ckpt").is_file()
                    ),
                    None,
                )
                if ckpt is None:
                    raise PipelineError(
                        f"{run_dir} has no checkpoint of ensemble member {k} ({stem}-best.ckpt)"
                    )
                net = build_backbone(
                    _member_config(cfg, None, str(ckpt)), dm.num_classes, dm.image_shape
                )
            members.append(freeze(net))
            labels.append(f"{b.name} [{stem}, seed {seed}]")
        return members, True, labels
    if not b.ensemble_checkpoints:
        return [], True, []
    main = (b.name, _resolved(b.checkpoint))
    with_backbone = False
    labels = []
    for entry in b.ensemble_checkpoints:
        name = entry.name or b.name
        labels.append(_label(name, entry.checkpoint))
        if (name, _resolved(entry.checkpoint)) == main and not with_backbone:
            with_backbone = True  # the run's own backbone: its pass is reused
            continue
        net = build_backbone(
            _member_config(cfg, entry.name, entry.checkpoint), dm.num_classes, dm.image_shape
        )
        members.append(freeze(net))
    return members, with_backbone, labels


def _resolved(path: str | None) -> str | None:
    return str(Path(str(path)).expanduser().resolve()) if path is not None else None


def prepare_baselines(
    cfg: DictConfig,
    dm: ImageDataModule,
    backbone: nn.Module,
    heads: Mapping[str, StageTwoClassifier],
    run_dir: Path,
    *,
    train: bool,
    device: torch.device | str = "cpu",
) -> Baselines:
    """Fit the temperatures, set up MC dropout and the ensemble (trained when ``train`` and
    ``stage1.ensemble > 1``, else loaded); print what was fitted and what was skipped."""
    temperatures, calibration = fit_temperatures(cfg, dm, backbone, heads, run_dir, device)
    mc = cfg.eval.mc_dropout
    mc_dropout = MCDropout(mc.samples, mc.p, seed=mc.seed) if mc.samples > 0 else None
    members, with_backbone, labels = ensemble_members(cfg, dm, run_dir, train=train)
    baselines = Baselines(
        temperatures=temperatures,
        calibration=calibration,
        mc_dropout=mc_dropout,
        ensemble=members,
        ensemble_with_backbone=with_backbone,
        ensemble_members=labels,
    )
    if is_global_zero():
        for line in baselines.notes():
            print(line)
    return baselines
