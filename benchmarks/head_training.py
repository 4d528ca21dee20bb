"""Stage-2 head epochs: per-item ``TensorDataset`` loader (before) against index-sliced batches
(``IndexedBatches``, after), side by side in one process through Lightning's ``Trainer.fit``.

Both heads of a run (introspective and control) train for ``--epochs`` epochs on the same
seeded synthetic rows with the shapes of CIFAR ResNet-20 (N = 10 classes, D = 64 head inputs,
F = 640 features; the default 5,170 rows are the size of the CIFAR experiments' training set):

* before: ``DataLoader(TensorDataset(features, labels), shuffle=True)`` on the materialized
  features (what ``runs.stage2`` did);
* after: ``IndexedBatches`` on the gradient factors (what it does now);
* loader only: ``IndexedBatches`` on the materialized features.

The order of the variants alternates over ``--repeats`` rounds; the median seconds per epoch
(both heads) and the before/after ratio are printed with the versions, and the seconds of one
pass over the batches alone (no training: the loader's own cost). Usage::

    nice -n 10 python -m benchmarks.head_training --threads 1
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from introspect.data.batches import IndexedBatches
from introspect.gradients import GradientFactors
from introspect.gradients.normalize import normalize_features
from introspect.models.stage2 import IntrospectiveClassifier, ProbeClassifier


class Backbone(nn.Module):
    """A stand-in backbone: the heads only read its head shape (features come precomputed)."""

    def __init__(self, classes: int, inputs: int) -> None:
        super().__init__()
        self.head = nn.Linear(inputs, classes)


def _fit(head: L.LightningModule, loader, epochs: int) -> float:
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=50,
    )  # fmt: skip
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(head, train_dataloaders=loader)
    return (time.perf_counter() - start) / epochs


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5170)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--inputs", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    n, d = args.classes, args.inputs
    probs = torch.softmax(torch.randn(args.rows, n, generator=g) * 3, dim=1)
    factors = GradientFactors.from_parts(
        (n * probs - 1)[:, None, :], torch.rand(args.rows, d, generator=g), normalize="l2"
    )
    dense = factors.materialize()
    penult = normalize_features(factors.h, "l2")
    labels = torch.randint(0, n, (args.rows,), generator=g)
    backbone = Backbone(n, d)
    common = {"num_classes": n, "hidden": (256, 128), "dropout": 0.1}

    def run(variant: str) -> float:
        seconds = 0.0
        for kind in ("introspective", "control"):
            L.seed_everything(0, verbose=False)
            if kind == "introspective":
                head = IntrospectiveClassifier(
                    backbone, feature_options={"normalize": "l2"}, in_dim=n * d, **common
                )
                x = factors if variant == "after" else dense
            else:
                head = ProbeClassifier(backbone, in_dim=d, normalize="l2", **common)
                x = penult
            if variant == "before":
                loader = DataLoader(TensorDataset(x, labels), batch_size=args.batch, shuffle=True)
            else:
                loader = IndexedBatches(x, labels, batch_size=args.batch, shuffle=True)
            seconds += _fit(head, loader, args.epochs)
        return seconds

    def fetch(variant: str) -> float:
        """Seconds of one pass over both heads' batches, without training."""
        start = time.perf_counter()
        for x in (factors if variant == "after" else dense, penult):
            if variant == "before":
                loader = DataLoader(TensorDataset(x, labels), batch_size=args.batch, shuffle=True)
            else:
                loader = IndexedBatches(x, labels, batch_size=args.batch, shuffle=True)
            for _ in loader:
                pass
        return time.perf_counter() - start

    variants = ("before", "after", "loader only")
    fetched: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(5):
        for v in variants if r % 2 == 0 else variants[::-1]:
            fetched[v].append(fetch(v))
    times: dict[str, list[float]] = {v: [] for v in variants}
    run("after")  # warm-up
    for r in range(args.repeats):
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            times[v].append(run(v))
    print(
        f"environment: python {platform.python_version()}, torch {torch.__version__}, "
        f"lightning {L.__version__}, {platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(
        f"setup: {args.rows} rows, N={n}, D={d}, batch {args.batch}, hidden (256, 128), "
        f"{args.epochs} epochs x {args.repeats} rounds, introspective + control heads"
    )
    median = {v: statistics.median(t) for v, t in times.items()}
    for v in variants:
        runs = ", ".join(f"{t:.3f}" for t in times[v])
        print(f"{v:>12}: {median[v]:.3f} s per epoch (both heads; rounds: {runs})")
    print(f"speed-up before/after: {median['before'] / median['after']:.2f}x "
          f"(loader only: {median['before'] / median['loader only']:.2f}x)")  # fmt: skip
    fetch_median = {v: statistics.median(t) for v, t in fetched.items()}
    print(
        "batches alone (one pass, both heads, median of 5): "
        + ", ".join(f"{v} {t * 1000:.1f} ms" for v, t in fetch_median.items())
        + f"; before/after {fetch_median['before'] / fetch_median['after']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
