"""Evaluate the feed-forward, introspective and control heads (and the baselines) on any
DataLoaders: ``evaluate`` returns an ``EvaluationResult`` that prints as the run's table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import CatMetric, SumMetric

from introspect.corruptions.cells import is_cell
from introspect.data.seeding import derive_seed
from introspect.metrics import classification_metrics
from introspect.metrics.temperature import fit_temperature, temper
from introspect.models.stage2 import IntrospectiveClassifier, StageTwoClassifier
from introspect.report.differences import LABELS, PAIRS, confidence_key
from introspect.report.names import HEADS, SHORT
from introspect.uncertainty import MCDropout, ensemble_probs

TABLE_METRICS = ("acc", "ece")


def head_logits(
    backbone: nn.Module, heads: Mapping[str, StageTwoClassifier], images: torch.Tensor
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``({"feedforward": logits, <head>: logits, ...}, penultimate)`` of ``images`` from one
    backbone pass: the introspective head's pass also yields the penultimate activations and the
    backbone's logits, which the control and the feed-forward head reuse."""
    intro = next((h for h in heads.values() if isinstance(h, IntrospectiveClassifier)), None)
    if intro is not None:
        intro_feats, penult, logits = intro.inputs_with_outputs(images)
    else:
        with torch.no_grad():
            logits, penult = backbone.forward_features(images)
    out = {"feedforward": logits.detach()}
    for name, head in heads.items():
        feats = intro_feats if head is intro else head.features(images, penultimate=penult)
        with torch.no_grad():
            out[name] = head.classify(feats)
    return out, penult.detach()


class Evaluator(L.LightningModule):
    """Test-time module: one dataloader per split, one metric collection per split and head.

    Metrics are torchmetrics states summed (or concatenated) over the processes of a
    distributed run. After ``trainer.test``, every process calls :meth:`collect` (with the
    module on the strategy's device): processes without a sample of any split skip Lightning's
    test loop, so the synchronization cannot live in a test hook.
    """

    def __init__(
        self,
        backbone: nn.Module,
        heads: Mapping[str, StageTwoClassifier],
        splits: Sequence[str],
        *,
        num_classes: int,
        n_bins: int = 15,
        temperatures: Mapping[str, float] | None = None,
        mc_dropout: MCDropout | None = None,
        ensemble: Sequence[nn.Module] = (),
        ensemble_with_backbone: bool = True,
    ) -> None:
        """``temperatures`` (head -> T) adds the tempered twins ``<head>_ts``; ``mc_dropout``
        the head ``mc_dropout``; ``ensemble`` (further stage-1 networks, in eval mode) the head
        ``ensemble``, the mean softmax of those networks and, with ``ensemble_with_backbone``,
        of ``backbone``."""
        super().__init__()
        # A process may get no sample of a split: exact sharding pads none with duplicates.
        self.allow_zero_length_dataloader_with_multiple_devices = True
        self.backbone = backbone.eval()
        self.heads = nn.ModuleDict(dict(heads))
        self.splits = list(splits)
        self.temperatures = dict(temperatures or {})
        unknown = [h for h in self.temperatures if h != "feedforward" and h not in heads]
        if unknown:
            raise ValueError(f"temperatures of heads {unknown} that are not evaluated")
        self.mc_dropout = mc_dropout
        self.ensemble = nn.ModuleList(m.eval() for m in ensemble)
        self.ensemble_with_backbone = ensemble_with_backbone
        if len(self.ensemble) + int(ensemble_with_backbone) < 2 and len(self.ensemble) > 0:
            raise ValueError("an ensemble needs at least two members")
        present = ["feedforward", *heads.keys()]
        present += [f"{h}_ts" for h in self.temperatures]
        present += ["mc_dropout"] if mc_dropout is not None else []
        present += ["ensemble"] if len(self.ensemble) else []
        self.head_names = [h for h in HEADS if h in present]
        self.head_names += [h for h in present if h not in self.head_names]
        base = classification_metrics(num_classes, n_bins=n_bins)
        self.metrics = nn.ModuleList(
            nn.ModuleDict({h: base.clone() for h in self.head_names}) for _ in self.splits
        )
        self.counts = nn.ModuleList(SumMetric() for _ in self.splits)
        # Per image, in dataset order (contiguous blocks gathered in rank order): the label,
        # whether each head's top-1 prediction is right and its top-1 confidence. Float, the
        # dtype torchmetrics gives a process without samples, so every process gathers tensors
        # of one dtype.
        keys = [*self.head_names, LABELS]
        self.per_image = nn.ModuleList(
            nn.ModuleDict({k: CatMetric(nan_strategy="disable") for k in keys}) for _ in self.splits
        )
        self.confidences = nn.ModuleList(
            nn.ModuleDict({h: CatMetric(nan_strategy="disable") for h in self.head_names})
            for _ in self.splits
        )

    def test_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        images, labels = batch
        if torch.is_inference_mode_enabled():
            # Under a trainer's inference mode: the introspective features need autograd.
            with torch.inference_mode(False), torch.enable_grad():
                self._test_batch(images.clone(), labels.clone(), batch_idx, dataloader_idx)
        else:
            self._test_batch(images, labels, batch_idx, dataloader_idx)

    def _test_batch(
        self, images: torch.Tensor, labels: torch.Tensor, batch_idx: int, dataloader_idx: int
    ) -> None:
        """Update every head's metrics and per-image records with one batch."""
        # One backbone pass per batch for the feed-forward, stage-2 and tempered heads.
        logits, penult = head_logits(self.backbone, self.heads, images)
        probs = {name: z.softmax(-1) for name, z in logits.items()}
        for name, t in self.temperatures.items():
            probs[f"{name}_ts"] = temper(logits[name], t).softmax(-1)
        if self.mc_dropout is not None:
            key = derive_seed(self.global_rank, dataloader_idx, batch_idx)
            samples = self.mc_dropout.sample_logits(
                self.backbone, images, penultimate=penult, key=key
            )
            probs["mc_dropout"] = samples.softmax(-1).mean(0)
        if len(self.ensemble):
            with torch.no_grad():
                members = [m(images) for m in self.ensemble]
            if self.ensemble_with_backbone:
                members.insert(0, logits["feedforward"])
            probs["ensemble"] = ensemble_probs(members)
        per_image = self.per_image[dataloader_idx]
        per_image[LABELS].update(labels.float())
        for name, p in probs.items():
            self.metrics[dataloader_idx][name].update(p, labels)
            per_image[name].update((p.argmax(-1) == labels).float())
            self.confidences[dataloader_idx][name].update(p.amax(-1).float())
        self.counts[dataloader_idx].update(torch.tensor(float(len(labels)), device=labels.device))

    def collect(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """``(results, bins)`` over all processes: ``results[split]`` holds ``num_samples`` and
        every head's metrics; ``bins[split][head]`` the reliability bin sums of
        ``ExpectedCalibrationError.bin_sums``. Collective: call it on every process."""
        results: dict[str, dict[str, Any]] = {}
        bins: dict[str, dict[str, Any]] = {}
        for i, split in enumerate(self.splits):
            entry: dict[str, Any] = {"num_samples": int(self.counts[i].compute().item())}
            for name in self.head_names:
                values = self.metrics[i][name].compute()
                entry[name] = {k: float(v) for k, v in values.items()}
            results[split] = entry
            bins[split] = {h: self.metrics[i][h]["ece"].bin_sums() for h in self.head_names}
        return results, bins

    def correctness(self) -> dict[str, dict[str, np.ndarray]]:
        """``{split: {head: correct, confidence_key(head): confidence, "labels": labels}}`` over
        all processes, one entry per test image in dataset order (the same order for every head,
        so heads stay paired): ``correct`` is 1 where the head's top-1 prediction is the label,
        else 0 (uint8); ``confidence`` its top-1 probability (float32); ``labels`` int64.
        Collective: call it on every process."""
        out: dict[str, dict[str, np.ndarray]] = {}
        for i, split in enumerate(self.splits):
            values = {k: m.compute().cpu().numpy() for k, m in self.per_image[i].items()}
            out[split] = {h: values[h].astype(np.uint8) for h in self.head_names}
            out[split] |= {
                confidence_key(h): m.compute().cpu().numpy().astype(np.float32)
                for h, m in self.confidences[i].items()
            }
            out[split][LABELS] = values[LABELS].astype(np.int64)
        return out


def summarize(splits: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean of every head's metrics over the ``<corruption>/<severity>`` cells (the benchmark
    number); ``clean`` and ``eval.extra`` splits are not part of it."""
    shifted = [v for k, v in splits.items() if is_cell(k)]
    if not shifted:
        return {}
    heads = [h for h in HEADS if h in shifted[0]]
    return {
        h: {m: sum(s[h][m] for s in shifted) / len(shifted) for m in shifted[0][h]} for h in heads
    }


def aggregate_by(splits: Mapping[str, Mapping[str, Any]], part: int) -> dict[str, Any]:
    """Means over shifted splits grouped by corruption (``part=0``) or severity (``part=1``)."""
    groups: dict[str, dict[str, Any]] = {}
    for name, entry in splits.items():
        if not is_cell(name):
            continue
        groups.setdefault(name.split("/")[part], {})[name] = entry
    return {g: summarize(members) for g, members in groups.items()}


def _markdown(
    first: str, rows: Mapping[str, Mapping[str, Any]], heads: list[str], sizes: bool
) -> list[str]:
    """Markdown lines: one row per entry, accuracy and ECE (in %) of every head."""
    cols = [f"{m} {SHORT.get(h, h)}" for m in TABLE_METRICS for h in heads]
    lines = [
        f"| {first} |" + (" n |" if sizes else "") + " " + " | ".join(cols) + " |",
        "|---|" + ("---:|" if sizes else "") + "---:|" * len(cols),
    ]
    for name, entry in rows.items():
        n = f" {entry.get('num_samples', '')} |" if sizes else ""
        vals = [f"{100 * entry[h][m]:.2f}" for m in TABLE_METRICS for h in heads]
        lines.append(f"| {name} |{n} " + " | ".join(vals) + " |")
    return lines


def format_table(results: Mapping[str, Any]) -> str:
    """Markdown: accuracy and ECE (in %) of every head per split and their shifted mean, then
    the means per corruption and per severity when there are shifted splits."""
    splits = results["splits"]
    heads = [h for h in HEADS if any(h in e for e in splits.values())]
    rows = dict(splits)
    if results.get("summary"):
        rows["**mean corrupted**"] = results["summary"]
    lines = _markdown("split", rows, heads, sizes=True)
    for key, title in (("by_corruption", "corruption"), ("by_severity", "severity")):
        if results.get(key):
            lines += ["", *_markdown(title, results[key], heads, sizes=False)]
    return "\n".join(lines)


def _interval_text(interval: Mapping[str, Any] | None) -> str:
    """`` [low, high] (verdict)`` in points from a record's interval, or nothing."""
    if not interval:
        return ""
    return f" [{100 * interval['low']:+.2f}, {100 * interval['high']:+.2f}] ({interval['verdict']})"


def verdict(results: Mapping[str, Any]) -> str:
    """One line per comparison of ``PAIRS``: the introspective head minus the feed-forward head
    and minus the controls (on h, on [h, p]), and the same for their tempered twins when there
    are any, on the clean split and on the corrupted cells (their mean).

    The accuracy and ECE differences carry their 95 % paired bootstrap intervals and verdicts
    from the record's ``differences`` block (clean split; corrupted cells pooled, stratified by
    cell) where the record has them; otherwise the point difference only."""
    out = []
    differences = results.get("differences") or {}
    for scope, key, entry in (
        ("clean", "clean", results["splits"].get("clean")),
        ("corrupted (mean of cells)", "corrupted", results.get("summary")),
    ):
        if not entry:
            continue
        for head, other in PAIRS:
            if head not in entry or other not in entry:
                continue
            d_acc = 100 * (entry[head]["acc"] - entry[other]["acc"])
            d_ece = 100 * (entry[head]["ece"] - entry[other]["ece"])
            intervals = differences.get(key, {}).get(f"{head}-{other}", {})
            name, versus = head.replace("_ts", "+TS"), other.replace("_ts", "+TS")
            ece = _interval_text(intervals.get("ece"))
            # Without an interval, the sign of the point difference says which is better.
            ece = ece or f" ({'better' if d_ece < 0 else 'worse'} calibrated)"
            out.append(
                f"{scope}: {name} vs {versus}: accuracy {d_acc:+.2f} pp"
                f"{_interval_text(intervals.get('acc'))}, ECE {d_ece:+.2f} pp{ece}"
            )
    return "\n".join(out)


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def head_logits_of(
    backbone: nn.Module,
    heads: Mapping[str, StageTwoClassifier],
    loader: DataLoader,
    device: torch.device | str | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``({"feedforward": logits, <head>: logits, ...}, labels)`` of every batch of ``loader``
    (on the CPU, in its order), one backbone pass per batch on ``device`` (default: the
    backbone's)."""
    device = device or _device_of(backbone)
    backbone.eval().to(device)
    for head in heads.values():
        head.eval().to(device)
    logits: dict[str, list[torch.Tensor]] = {}
    labels: list[torch.Tensor] = []
    with torch.inference_mode(False), torch.enable_grad():
        for images, y in loader:
            out, _ = head_logits(backbone, heads, images.to(device))
            for name, z in out.items():
                logits.setdefault(name, []).append(z.detach().cpu())
            labels.append(y.cpu())
    return {k: torch.cat(v) for k, v in logits.items()}, torch.cat(labels)


def fit_head_temperatures(
    backbone: nn.Module,
    heads: Mapping[str, StageTwoClassifier],
    loader: DataLoader,
    *,
    names: Sequence[str] | None = None,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Temperature (minimizing the NLL) of the feed-forward network and every head of
    ``heads`` (only ``names`` when given) on the images of ``loader``."""
    logits, labels = head_logits_of(backbone, heads, loader, device)
    wanted = list(names) if names is not None else ["feedforward", *heads]
    return {h: fit_temperature(logits[h], labels) for h in wanted}


@dataclass
class FittedHeads:
    """A frozen stage-1 network, the stage-2 heads on it (name -> head) and the temperatures
    fitted for any of them (``"feedforward"`` included), as ``fit_heads`` returns them."""

    backbone: nn.Module
    heads: dict[str, StageTwoClassifier]
    temperatures: dict[str, float] = field(default_factory=dict)

    def predict(
        self, loader: DataLoader, device: torch.device | str | None = None
    ) -> dict[str, torch.Tensor]:
        """Logits of every head on ``loader``'s images (``feedforward``, the heads, and
        ``<head>_ts`` for every fitted temperature) and their ``labels``, in loader order."""
        logits, labels = head_logits_of(self.backbone, self.heads, loader, device)
        for name, t in self.temperatures.items():
            logits[f"{name}_ts"] = temper(logits[name], t)
        return {h: logits[h] for h in HEADS if h in logits} | {LABELS: labels}


@dataclass
class EvaluationResult:
    """Metrics of every head per split (``splits[split][head]``: ``acc``, ``ece``, ``nll``...
    and ``num_samples``), the reliability bin sums and the per-image correctness records
    (``Evaluator.collect`` and ``Evaluator.correctness``). ``str`` gives the run's table."""

    splits: dict[str, dict[str, Any]]
    bins: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_image: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean of every head's metrics over the corruption cells (see ``summarize``)."""
        return summarize(self.splits)

    def as_dict(self) -> dict[str, Any]:
        """``splits``, ``summary``, ``by_corruption`` and ``by_severity``, as in a run's
        ``results.json``."""
        return {
            "splits": self.splits,
            "summary": self.summary(),
            "by_corruption": aggregate_by(self.splits, 0),
            "by_severity": aggregate_by(self.splits, 1),
        }

    def table(self) -> str:
        """The markdown table the CLI prints (``format_table``)."""
        return format_table(self.as_dict())

    def __str__(self) -> str:
        return self.table()


def evaluate(
    fitted: FittedHeads,
    loaders: Mapping[str, DataLoader],
    *,
    num_classes: int | None = None,
    n_bins: int = 15,
    mc_dropout: MCDropout | None = None,
    ensemble: Sequence[nn.Module] = (),
    ensemble_with_backbone: bool = True,
    trainer: L.Trainer | None = None,
) -> EvaluationResult:
    """Accuracy, ECE, NLL (and the rest of ``metrics.classification_metrics``) of the
    feed-forward network, every head of ``fitted`` and their tempered twins, plus MC dropout
    and the ensemble when given, on every loader of ``loaders`` (split or corruption-cell name
    -> DataLoader of ``(images, labels)``, cells named ``<corruption>/<severity>``).

    ``trainer`` runs the test loop (default: one quiet device, the backbone's); under its
    inference mode the introspective features are still computed with autograd.
    """
    names = list(loaders)
    evaluator = Evaluator(
        fitted.backbone,
        fitted.heads,
        names,
        num_classes=num_classes or int(fitted.backbone.head.weight.shape[0]),
        n_bins=n_bins,
        temperatures=fitted.temperatures,
        mc_dropout=mc_dropout,
        ensemble=ensemble,
        ensemble_with_backbone=ensemble_with_backbone,
    )
    if trainer is None:
        accelerator = "gpu" if _device_of(fitted.backbone).type == "cuda" else "cpu"
        trainer = L.Trainer(
            accelerator=accelerator, devices=1, logger=False, enable_progress_bar=False,
            enable_model_summary=False, inference_mode=False,
        )  # fmt: skip
    trainer.test(evaluator, dataloaders=[loaders[n] for n in names], verbose=False)
    # Lightning moved the module to the CPU; synchronize where the process group works.
    evaluator.to(trainer.strategy.root_device)
    results, bins = evaluator.collect()
    return EvaluationResult(results, bins, evaluator.correctness())
