"""Evaluate the feed-forward, introspective and control heads on every evaluation split."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import SumMetric

from introspect.data.shifted import is_cell
from introspect.metrics import classification_metrics
from introspect.models.stage2 import IntrospectiveClassifier, StageTwoClassifier

HEADS = ("feedforward", "introspective", "control")
TABLE_METRICS = ("acc", "ece")


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
    ) -> None:
        super().__init__()
        # A process may get no sample of a split: exact sharding pads none with duplicates.
        self.allow_zero_length_dataloader_with_multiple_devices = True
        self.backbone = backbone.eval()
        self.heads = nn.ModuleDict(dict(heads))
        self.splits = list(splits)
        self.head_names = ["feedforward", *heads.keys()]
        base = classification_metrics(num_classes, n_bins=n_bins)
        self.metrics = nn.ModuleList(
            nn.ModuleDict({h: base.clone() for h in self.head_names}) for _ in self.splits
        )
        self.counts = nn.ModuleList(SumMetric() for _ in self.splits)

    def test_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], _idx: int, dataloader_idx: int = 0
    ) -> None:
        images, labels = batch
        # One backbone pass per batch: the introspective head's pass also yields h and logits.
        intro = next(
            (h for h in self.heads.values() if isinstance(h, IntrospectiveClassifier)), None
        )
        if intro is not None:
            intro_feats, penult, logits = intro.features_with_outputs(images)
        else:
            with torch.no_grad():
                logits, penult = self.backbone.forward_features(images)
        probs = {"feedforward": logits.softmax(-1)}
        for name, head in self.heads.items():
            if head is intro:
                feats = intro_feats
            else:
                feats = head.features(images, penultimate=penult)
            with torch.no_grad():
                probs[name] = head.classify(feats).softmax(-1)
        for name, p in probs.items():
            self.metrics[dataloader_idx][name].update(p, labels)
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
    short = {"feedforward": "FF", "introspective": "INT", "control": "CTL"}
    cols = [f"{m} {short[h]}" for m in TABLE_METRICS for h in heads]
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


def verdict(results: Mapping[str, Any]) -> str:
    """One line per comparison: introspective minus feed-forward and minus control."""
    out = []
    for scope, entry in (
        ("clean", results["splits"].get("clean")),
        ("corrupted (mean of cells)", results.get("summary")),
    ):
        if not entry or "introspective" not in entry:
            continue
        intro = entry["introspective"]
        for other in ("feedforward", "control"):
            if other not in entry:
                continue
            d_acc = 100 * (intro["acc"] - entry[other]["acc"])
            d_ece = 100 * (intro["ece"] - entry[other]["ece"])
            out.append(
                f"{scope}: introspective vs {other}: accuracy {d_acc:+.2f} pp, "
                f"ECE {d_ece:+.2f} pp ({'better' if d_ece < 0 else 'worse'} calibrated)"
            )
    return "\n".join(out)
