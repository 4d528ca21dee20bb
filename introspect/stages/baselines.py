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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from introspect.data import ImageDataModule
from introspect.data.seeding import derive_seed
from introspect.metrics.temperature import fit_temperature
from introspect.models.stage2 import StageTwoClassifier, freeze
from introspect.runs.distributed import broadcast_from_zero, is_global_zero
from introspect.runs.errors import PipelineError
from introspect.stages.evaluation import head_logits_of
from introspect.stages.options import Stage1Options
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


@dataclass(frozen=True)
class CalibrationPlan:
    """Where temperatures are fitted: the ``split`` of the data module (``none``: nowhere),
    the splits the stage-2 heads were trained on, whether the feed-forward network was
    trained by this run (then not on its train split), the data's ``val_fraction`` (named
    when the val split is empty) and the batch size of the pass."""

    split: str = "val"
    stage2_splits: tuple[str, ...] = ("train",)
    trained_here: bool = True
    val_fraction: float = 0.1
    batch_size: int = 256


def trained_here(checkpoint: str | None, run_dir: Path) -> bool:
    """Whether the feed-forward network was trained by the run in ``run_dir`` (no configured
    ``checkpoint``, or one of the run's own)."""
    if checkpoint is None:
        return True
    return (
        Path(str(checkpoint)).expanduser().resolve().parent == (run_dir / "checkpoints").resolve()
    )


def calibration_skips(
    plan: CalibrationPlan, dm: ImageDataModule, head_names: list[str]
) -> dict[str, str]:
    """``{head: reason}`` for every head of ``["feedforward", *head_names]`` that cannot be
    tempered on ``plan.split``."""
    split = plan.split
    heads = ["feedforward", *head_names]
    if split == "none":
        return {h: "eval.calibration_split=none" for h in heads}
    if len(dm.split(split)) == 0:  # type: ignore[arg-type]
        reason = f"the {split} split is empty, so there is no calibration split"
        if split == "val":
            reason += f" (data.val_fraction={plan.val_fraction})"
        return {h: reason for h in heads}
    skipped: dict[str, str] = {}
    if split == "train" and plan.trained_here:
        skipped["feedforward"] = "the feed-forward network was trained on the train split"
    for h in head_names:
        if split in plan.stage2_splits:
            skipped[h] = (
                f"the {h} head was trained on the {split} split "
                f"(stage2.splits={list(plan.stage2_splits)})"
            )
    return skipped


def fit_temperatures(
    plan: CalibrationPlan,
    dm: ImageDataModule,
    backbone: nn.Module,
    heads: Mapping[str, StageTwoClassifier],
    device: torch.device | str = "cpu",
) -> tuple[dict[str, float], dict[str, Any]]:
    """Temperatures of every head that may be tempered, fitted on ``plan.split`` with one
    backbone pass per batch, and the calibration record (split, samples, skipped heads with
    reasons, seconds). Every process computes them on the whole split; rank zero's values
    are used by all."""
    skipped = calibration_skips(plan, dm, list(heads))
    wanted = [h for h in ["feedforward", *heads] if h not in skipped]
    record: dict[str, Any] = {"split": plan.split, "num_samples": 0, "skipped": skipped}
    if not wanted:
        return {}, record
    started = time.perf_counter()
    loader = dm.loader(dm.split(plan.split), batch_size=plan.batch_size)
    logits, target = head_logits_of(backbone, heads, loader, device)
    pass_seconds = time.perf_counter() - started
    temperatures: dict[str, float] = {}
    fit_seconds: dict[str, float] = {}
    for h in wanted:
        t0 = time.perf_counter()
        temperatures[h] = fit_temperature(logits[h], target)
        fit_seconds[h] = round(time.perf_counter() - t0, 4)
    temperatures = broadcast_from_zero(temperatures)
    record |= {
        "num_samples": int(target.numel()),
        "pass_seconds": round(pass_seconds, 2),
        "fit_seconds": fit_seconds,
    }
    return temperatures, record


def _member_options(
    options: Stage1Options, name: str | None, checkpoint: str | None
) -> Stage1Options:
    """``options`` with the backbone replaced by one ensemble member: the same options when the
    member has the run's architecture, the registry's defaults otherwise."""
    if name is not None and name != options.backbone.name:
        return options.with_backbone(
            name=name,
            mean=None,
            std=None,
            head=None,
            kwargs={},
            cifar_stem=False,
            checkpoint=checkpoint,
        )
    return options.with_backbone(checkpoint=checkpoint)


def _label(name: str, checkpoint: str | None) -> str:
    return f"{name} [{Path(checkpoint).name}]" if checkpoint else name


def ensemble_members(
    options: Stage1Options, dm: ImageDataModule, run_dir: Path, *, train: bool
) -> tuple[list[nn.Module], bool, list[str]]:
    """``(members, with_backbone, labels)``: the stage-1 networks of the ensemble besides the
    run's backbone (eval mode, frozen), whether the run's backbone is a member, and a label per
    member, for the stage-1 ``options``. ``stage1.ensemble=K`` trains members 2..K with their
    own seeds (``train``) or loads them from ``<run>/checkpoints/stage1-member<k>-best.ckpt``;
    ``backbone.ensemble_checkpoints`` loads the listed networks (a member equal to the run's
    backbone reuses its pass)."""

    members: list[nn.Module] = []
    b = options.backbone
    if options.stage1.ensemble > 1:
        labels = [f"{b.name} [stage1, run.seed={options.seed}]"]
        for k in range(2, options.stage1.ensemble + 1):
            seed = member_seed(options.seed, k)
            stem = member_checkpoint_name(k)
            if train:
                L.seed_everything(seed, workers=True, verbose=False)
                net = build_backbone(options, dm.num_classes, dm.image_shape)
                with warnings.catch_warnings():
                    # Members share <run>/checkpoints with the first network, by design.
                    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* not empty")
                    model = stage1(options, dm, net, run_dir, [], name=stem)
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
                    _member_options(options, None, str(ckpt)), dm.num_classes, dm.image_shape
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
            _member_options(options, entry.name, entry.checkpoint),
            dm.num_classes,
            dm.image_shape,
        )
        members.append(freeze(net))
    return members, with_backbone, labels


def _resolved(path: str | None) -> str | None:
    return str(Path(str(path)).expanduser().resolve()) if path is not None else None


def prepare_baselines(
    plan: CalibrationPlan,
    dm: ImageDataModule,
    backbone: nn.Module,
    heads: Mapping[str, StageTwoClassifier],
    *,
    mc_dropout: MCDropout | None = None,
    ensemble: Callable[[], tuple[list[nn.Module], bool, list[str]]] | None = None,
    device: torch.device | str = "cpu",
) -> Baselines:
    """Fit the temperatures, then set up the ensemble (``ensemble``, e.g. ``ensemble_members``
    bound to its arguments, trains or loads the members); gather them with MC dropout; print
    what was fitted and what was skipped."""
    temperatures, calibration = fit_temperatures(plan, dm, backbone, heads, device)
    members, with_backbone, labels = ensemble() if ensemble is not None else ([], True, [])
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
