"""Training phases of ProtoPNet as stage 1: warm-up, joint, push, last-layer optimisation.

Losses (Chen et al. 2019): cross-entropy + ``clst`` x cluster + ``sep`` x separation, with
cluster = mean over images of the smallest distance to a prototype of the image's class,
separation = minus the mean over images of the smallest distance to a prototype of another
class; the last-layer phase adds ``l1`` x the L1 norm of the wrong-class connections.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from introspect.backbones import Backbone
from introspect.backbones.protopnet import ProtoPNet, similarity

PHASES = ("warm", "joint", "push", "last_layer")


def _net(backbone: Backbone) -> ProtoPNet:
    net = backbone.net
    if not isinstance(net, ProtoPNet):
        raise TypeError(f"expected a ProtoPNet backbone, got {type(net).__name__}")
    return net


def cluster_separation(
    min_distances: torch.Tensor, labels: torch.Tensor, prototype_class: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cluster, separation)`` costs of ``(B, P)`` minimum distances for ``labels``."""
    own = labels[:, None] == prototype_class[None, :]
    inf = torch.full_like(min_distances, float("inf"))
    cluster = torch.where(own, min_distances, inf).amin(dim=1).mean()
    separation = -torch.where(own, inf, min_distances).amin(dim=1).mean()
    return cluster, separation


def wrong_class_l1(net: ProtoPNet) -> torch.Tensor:
    """L1 norm of the last-layer weights connecting prototypes to classes not their own."""
    return (net.last_layer.weight * (1 - net.class_identity().T)).abs().sum()


def protopnet_loss(
    net: ProtoPNet,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    clst: float,
    sep: float,
    l1: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss on normalized images ``x`` and its terms (``ce``, ``cluster``,
    ``separation``, ``l1``, plus ``logits``)."""
    out = net.details(x)
    ce = F.cross_entropy(out["logits"], labels)
    cluster, separation = cluster_separation(out["min_distances"], labels, net.prototype_class)
    l1_term = wrong_class_l1(net)
    total = ce + clst * cluster + sep * separation + (l1 * l1_term if l1 else 0.0)
    terms = {"ce": ce, "cluster": cluster, "separation": separation, "l1": l1_term}
    return total, {**terms, "logits": out["logits"]}


def _set_trainable(net: ProtoPNet, phase: str) -> list[dict[str, Any]]:
    """Freeze/unfreeze per phase; the optimizer groups of the phase (lrs filled in later)."""
    trunk = phase == "joint"
    features = phase in ("warm", "joint")
    for p in net.trunk.parameters():
        p.requires_grad_(trunk)
    for p in net.add_on.parameters():
        p.requires_grad_(features)
    net.prototype_vectors.requires_grad_(features)
    net.last_layer.weight.requires_grad_(phase == "last_layer")
    if phase == "last_layer":
        return [{"params": [net.last_layer.weight], "key": "last_layer_lr"}]
    groups = [
        {"params": list(net.add_on.parameters()), "key": "add_on_lr", "wd": True},
        {"params": [net.prototype_vectors], "key": "prototype_lr"},
    ]
    if trunk:
        groups.insert(0, {"params": list(net.trunk.parameters()), "key": "trunk_lr", "wd": True})
    return groups


def train_phase(
    backbone: Backbone,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    phase: str,
    epochs: int,
    settings: Mapping[str, Any],
    device: torch.device,
    log: Any = None,
    *,
    start: Mapping[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, float]]:
    """Train ``epochs`` epochs of ``phase`` (``warm``, ``joint`` or ``last_layer``) with Adam;
    returns the per-epoch mean loss terms and training accuracy.

    ``on_epoch`` gets ``{"optimizer": state, "history": rows so far}`` after every epoch;
    passing such a dict as ``start`` continues the phase after its last epoch."""
    net = _net(backbone)
    groups = _set_trainable(net, phase)
    lr_key = "warm_lr" if phase == "warm" else None
    optimizer = torch.optim.Adam(
        [
            {
                "params": g["params"],
                "lr": settings[lr_key or g["key"]],
                "weight_decay": settings["weight_decay"] if g.get("wd") else 0.0,
            }
            for g in groups
        ]
    )
    l1 = settings["l1"] if phase == "last_layer" else 0.0
    history: list[dict[str, float]] = []
    if start is not None:
        optimizer.load_state_dict(start["optimizer"])
        history = [dict(row) for row in start["history"]]
    for epoch in range(len(history), epochs):
        backbone.train()
        sums: dict[str, float] = {}
        correct = seen = 0
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            loss, terms = protopnet_loss(
                net,
                backbone.normalize(images),
                labels,
                clst=settings["clst"],
                sep=settings["sep"],
                l1=l1,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = len(labels)
            for key in ("ce", "cluster", "separation", "l1"):
                sums[key] = sums.get(key, 0.0) + float(terms[key].detach()) * n
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * n
            correct += int((terms["logits"].argmax(1) == labels).sum())
            seen += n
        row = {k: v / max(seen, 1) for k, v in sums.items()}
        row["acc"] = correct / max(seen, 1)
        history.append(row)
        if log is not None:
            log(phase, epoch, row)
        if on_epoch is not None:
            on_epoch({"optimizer": optimizer.state_dict(), "history": history})
    for p in net.parameters():
        p.requires_grad_(True)
    return history


@torch.no_grad()
def push_prototypes(
    backbone: Backbone,
    dataset: Dataset,
    *,
    batch_size: int = 256,
    device: torch.device | None = None,
    box_percentile: float = 95.0,
) -> None:
    """Replace every prototype by the nearest patch feature of a ``dataset`` image of its class.

    ``dataset`` yields ``(image, label)`` (un-augmented); the image index, the patch position
    and the box (the ``box_percentile`` region of the upsampled similarity map on that image)
    are written to the network's ``push_*`` buffers.
    """
    net = _net(backbone)
    device = device or next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    count = net.num_prototypes
    best = torch.full((count,), float("inf"), device=device)
    best_vec = torch.zeros_like(net.prototype_vectors[:, :, 0, 0])
    best_image = torch.full((count,), -1, dtype=torch.long, device=device)
    best_loc = torch.full((count, 2), -1, dtype=torch.long, device=device)
    offset = 0
    for images, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        images, labels = images.to(device), torch.as_tensor(labels, device=device)
        z = net.feature_map(backbone.normalize(images))
        d = net.distances(z)
        b, _, h, w = d.shape
        own = labels[:, None] == net.prototype_class[None, :]
        d = d.masked_fill(~own[:, :, None, None], float("inf"))
        values, where = d.permute(1, 0, 2, 3).reshape(count, -1).min(dim=1)
        better = values < best
        image, rest = where // (h * w), where % (h * w)
        row, col = rest // w, rest % w
        best = torch.where(better, values, best)
        best_vec[better] = z[image, :, row, col][better]
        best_image[better] = image[better] + offset
        best_loc[better] = torch.stack([row, col], dim=1)[better]
        offset += b
    missing = (best_image < 0).nonzero().flatten().tolist()
    if missing:
        raise ValueError(
            f"no training image of the class of prototypes {missing}; every class needs images"
        )
    net.prototype_vectors.copy_(best_vec[:, :, None, None])
    net.push_image.copy_(best_image)
    net.push_location.copy_(best_loc)
    for j in range(count):
        image = dataset[int(best_image[j])][0][None].to(device)
        sim_map = similarity(
            net.distances(net.feature_map(backbone.normalize(image)))[:, j : j + 1], net.epsilon
        )
        net.push_box[j] = torch.as_tensor(
            high_activation_box(sim_map, image.shape[-2:], box_percentile)[0]
        )
    backbone.train(was_training)


def upsample_map(maps: torch.Tensor, size: Iterable[int]) -> torch.Tensor:
    """``(B, 1, h, w)`` maps bilinearly upsampled to ``size`` -> ``(B, H, W)``."""
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def high_activation_box(
    maps: torch.Tensor, size: Iterable[int], percentile: float = 95.0
) -> list[list[int]]:
    """Per map of ``(B, 1, h, w)``: the box ``[y0, y1, x0, x1]`` (end exclusive) around the
    pixels of the upsampled map at or above its ``percentile``."""
    up = upsample_map(maps, size)
    boxes = []
    for m in up:
        threshold = torch.quantile(m.flatten(), percentile / 100)
        ys, xs = (m >= threshold).nonzero(as_tuple=True)
        boxes.append([int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1])
    return boxes


@torch.no_grad()
def accuracy(
    backbone: nn.Module, dataset: Dataset, device: torch.device, batch: int = 256
) -> float:
    """Accuracy of ``backbone`` on ``dataset`` (eval mode; ``nan`` for an empty dataset)."""
    was_training = backbone.training
    backbone.eval()
    correct = seen = 0
    for images, labels in DataLoader(dataset, batch_size=batch, shuffle=False):
        labels = torch.as_tensor(labels, device=device)
        correct += int((backbone(images.to(device)).argmax(1) == labels).sum())
        seen += len(labels)
    backbone.train(was_training)
    return correct / seen if seen else float("nan")


def save_checkpoint(backbone: Backbone, path: Path, **info: Any) -> None:
    """Write the backbone's weights as ``{"state_dict": {"backbone.<key>": tensor}, ...info}``
    (plain values only, so it loads with ``weights_only=True``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"backbone.{k}": v.detach().cpu() for k, v in backbone.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"state_dict": state, **info}, tmp)
    tmp.replace(path)


class _Steps:
    """The loggers of one ProtoPNet training and its running logging step."""

    def __init__(self, loggers: Iterable[Logger], step: int = 0) -> None:
        self.loggers = list(loggers)
        self.step = step

    def log(self, metrics: Mapping[str, float]) -> None:
        """Log ``metrics`` at the current step, then advance it."""
        for logger in self.loggers:
            logger.log_metrics(dict(metrics), step=self.step)
        self.step += 1

    def epoch(self, phase: str, epoch: int, row: Mapping[str, float]) -> None:
        """Log one epoch's ``row`` of ``phase``."""
        metrics = {f"protopnet/{phase}/{k}": v for k, v in row.items()}
        self.log(metrics | {f"protopnet/{phase}/epoch": epoch})


def _restore(backbone: Backbone, checkpoint: Mapping[str, Any]) -> int:
    """Load a checkpoint's weights and random state; returns its logging step."""
    backbone.load_state_dict(
        {k.removeprefix("backbone."): v for k, v in checkpoint["state_dict"].items()}
    )
    _set_rng(checkpoint["rng"])
    return int(checkpoint["step"])


def _run_phase(
    backbone: Backbone,
    dm: Any,
    loader: DataLoader,
    phase: str,
    settings: Mapping[str, Any],
    device: torch.device,
    steps: _Steps,
    *,
    partial: Path,
    resume: bool,
) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """One phase (the push on ``dm``'s train split, or a training phase on ``loader`` that
    checkpoints each epoch to ``partial`` and, with ``resume``, continues from it): its
    per-epoch history and extra record keys."""
    record: dict[str, Any] = {}
    if phase == "push":
        push_prototypes(backbone, dm.split("train"), device=device)
        return [], record
    begun = _epoch_checkpoint(partial, phase) if resume else None
    if begun is not None:
        steps.step = _restore(backbone, begun)
        record["resumed_at_epoch"] = len(begun["history"])

    def on_epoch(state: dict[str, Any]) -> None:
        save_checkpoint(backbone, partial, phase=phase, rng=_get_rng(), step=steps.step, **state)

    epochs = settings[f"{phase}_epochs"]
    history = train_phase(
        backbone,
        loader,
        phase,
        epochs,
        settings,
        device,
        log=steps.epoch,
        start=begun,
        on_epoch=on_epoch,
    )
    return history, record


def train_protopnet(
    backbone: Backbone,
    dm: Any,
    settings: Mapping[str, Any],
    *,
    run_dir: Path,
    loggers: Iterable[Logger] = (),
    device: torch.device | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """All phases on ``dm``'s train split (stage-1 augmentation applied in the training
    phases, none in the push); a checkpoint after each phase under ``<run>/checkpoints``
    (``protopnet-<phase>.ckpt``: weights, the phase's record, the random state and the logging
    step) and, during a training phase, after each epoch (``protopnet-<phase>-epoch.ckpt``, with
    the optimizer; removed when the phase ends); the final model also as ``stage1-best.ckpt``
    and ``stage1-last.ckpt``. Returns the per-phase record: history, validation accuracy and
    seconds.

    With ``resume`` the phases whose checkpoints are there (in order, from the first) are not
    run again: the model, random state and records continue from the last of them (records of
    those phases get ``"restored": true``), and the next phase continues after its last
    checkpointed epoch (``"resumed_at_epoch"`` in its record), else from its start.
    """
    device = device or torch.device("cpu")
    backbone.to(device)
    folder = Path(run_dir) / "checkpoints"
    summary: dict[str, Any] = {}
    steps = _Steps(loggers)
    if resume:
        finished = finished_phases(folder)
        for phase, ckpt in finished:
            summary[phase] = {**ckpt["record"], "restored": True}
        if finished:
            steps.step = _restore(backbone, finished[-1][1])
    loader = dm.train_dataloader()
    val = dm.split("val")
    for phase in PHASES:
        partial = folder / f"protopnet-{phase}-epoch.ckpt"
        if phase in summary:
            partial.unlink(missing_ok=True)
            continue
        start = time.perf_counter()
        history, record = _run_phase(
            backbone, dm, loader, phase, settings, device, steps, partial=partial, resume=resume
        )
        val_acc = accuracy(backbone, val, device) if len(val) else float("nan")
        seconds = time.perf_counter() - start
        summary[phase] = {"history": history, "val_acc": val_acc, "seconds": seconds, **record}
        steps.log({f"protopnet/{phase}/val_acc": val_acc})
        save_checkpoint(
            backbone,
            folder / f"protopnet-{phase}.ckpt",
            phase=phase,
            record=summary[phase],
            rng=_get_rng(),
            step=steps.step,
        )
        partial.unlink(missing_ok=True)
    for name in ("stage1-best.ckpt", "stage1-last.ckpt"):
        save_checkpoint(backbone, folder / name, phase="last_layer")
    return summary


def finished_phases(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(phase, checkpoint)`` of the phases, in order from the first, whose checkpoints in
    ``folder`` are complete (weights, record, random state); stops at the first that is not."""
    done = []
    for phase in PHASES:
        path = Path(folder) / f"protopnet-{phase}.ckpt"
        if not path.is_file():
            break
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if ckpt.get("phase") != phase or not {"record", "rng", "step"} <= set(ckpt):
            break
        done.append((phase, ckpt))
    return done


def _epoch_checkpoint(path: Path, phase: str) -> dict[str, Any] | None:
    """The end-of-epoch checkpoint of ``phase`` at ``path``, if there is a complete one."""
    if not path.is_file():
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    keys = {"state_dict", "optimizer", "history", "rng", "step"}
    return ckpt if ckpt.get("phase") == phase and keys <= set(ckpt) else None


def _get_rng() -> dict[str, Any]:
    """The torch random states (CPU, and CUDA when in use) a phase leaves behind."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng(state: Mapping[str, Any]) -> None:
    """Restore what ``_get_rng`` returned."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
