"""Stage-2 head epochs before and after issue 12, side by side in one process.

Both heads of a run (introspective and control) train for ``--epochs`` epochs, with a
validation pass per epoch, on seeded synthetic rows with the shapes of CIFAR ResNet-20 (N = 10
classes, D = 64 head inputs, F = 640 features; the default 15,510 rows are the 5,170 training
images of ``experiment=cifar10_resnet20`` under its AugMix recipe, clean + 2 passes; 509
validation rows):

* before: each head through its own ``Trainer.fit`` on a per-item
  ``DataLoader(TensorDataset(features, labels), shuffle=True)`` of the materialized features,
  with torch's per-tensor optimizer update (what ``runs.stage2`` did before issue 12);
* separate: each head through its own ``Trainer.fit`` on ``IndexedBatches`` (index slicing;
  the introspective head on gradient factors), with the fused optimizer update (what
  ``runs.stage2`` does for a head trained alone);
* together: both heads in one ``Trainer.fit`` of a ``HeadPair`` over ``ZippedBatches`` of the
  same ``IndexedBatches`` (what ``runs.stage2`` does now; each head ends with the weights
  training it alone gives, which the tests check).

The variants alternate over ``--repeats`` rounds (the order reversed every other round); the
script prints the seconds per epoch (both heads) of every round, the median, and the ratios
before/together and separate/together per round (median, min, max), and the process CPU
seconds. Usage::

    nice -n 10 python -m benchmarks.head_training --threads 1
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from functools import partial

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from introspect.data.batches import IndexedBatches, ZippedBatches
from introspect.data.seeding import RngStream
from introspect.gradients import GradientFactors
from introspect.gradients.normalize import normalize_features
from introspect.models.optim import build_optimizer
from introspect.models.pair import HeadPair
from introspect.models.stage2 import IntrospectiveClassifier, ProbeClassifier, StageTwoClassifier


class Backbone(nn.Module):
    """A stand-in backbone: the heads only read its head shape (features come precomputed)."""

    def __init__(self, classes: int, inputs: int) -> None:
        super().__init__()
        self.head = nn.Linear(inputs, classes)


def _trainer(epochs: int) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=10,
    )  # fmt: skip


def _rows(rows: int, n: int, d: int, seed: int) -> tuple[GradientFactors, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(rows, n, generator=g) * 3, dim=1)
    factors = GradientFactors.from_parts(
        (n * probs - 1)[:, None, :], torch.rand(rows, d, generator=g), normalize="l2"
    )
    return factors, torch.randint(0, n, (rows,), generator=g)


def per_tensor_optimizer(head: StageTwoClassifier) -> object:
    """The head's optimizer as built before issue 12 (torch's per-tensor update)."""
    return build_optimizer(head.head.parameters(), head.optim, head.trainer)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=15510)
    parser.add_argument("--val-rows", type=int, default=509)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--inputs", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    n, d = args.classes, args.inputs
    data = {"train": _rows(args.rows, n, d, 0), "val": _rows(args.val_rows, n, d, 1)}
    backbone = Backbone(n, d)
    common = {"num_classes": n, "hidden": (256, 128), "dropout": 0.1}

    def build() -> list[tuple[L.LightningModule, RngStream]]:
        """Both heads as ``runs.stage2`` builds them, each with the stream it starts from."""
        out = []
        for kind in ("introspective", "control"):
            L.seed_everything(0, verbose=False)
            if kind == "introspective":
                head: L.LightningModule = IntrospectiveClassifier(
                    backbone, feature_options={"normalize": "l2"}, in_dim=n * d, **common
                )
            else:
                head = ProbeClassifier(backbone, in_dim=d, normalize="l2", **common)
            out.append((head, RngStream(0)))
        return out

    def inputs(kind: str, split: str, dense: bool) -> tuple[torch.Tensor | GradientFactors, ...]:
        factors, labels = data[split]
        if kind == "control":
            return normalize_features(factors.h, "l2"), labels
        return (factors.materialize() if dense else factors), labels

    def run(variant: str) -> float:
        heads = build()
        if variant == "before":
            for head, _ in heads:  # the per-tensor optimizer update of the code before
                head.configure_optimizers = partial(per_tensor_optimizer, head)
        start = time.perf_counter()
        if variant == "together":
            loaders = {
                split: ZippedBatches(
                    [
                        IndexedBatches(
                            *inputs(h.kind, split, False),
                            batch_size=args.batch,
                            shuffle=split == "train",
                        )
                        for h, _ in heads
                    ],
                    [s for _, s in heads],
                )
                for split in ("train", "val")
            }
            pair = HeadPair([h for h, _ in heads], [s for _, s in heads])
            _trainer(args.epochs).fit(pair, loaders["train"], loaders["val"])
        else:
            for head, stream in heads:
                loaders = {}
                for split in ("train", "val"):
                    x = inputs(head.kind, split, variant == "before")
                    shuffle = split == "train"
                    if variant == "before":
                        loaders[split] = DataLoader(
                            TensorDataset(*x), batch_size=args.batch, shuffle=shuffle
                        )
                    else:
                        loaders[split] = IndexedBatches(*x, batch_size=args.batch, shuffle=shuffle)
                with stream:
                    _trainer(args.epochs).fit(head, loaders["train"], loaders["val"])
        return (time.perf_counter() - start) / args.epochs

    variants = ("before", "separate", "together")
    times: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, float] = dict.fromkeys(variants, 0.0)
    run("together")  # warm-up
    for r in range(args.repeats):
        for v in variants if r % 2 == 0 else variants[::-1]:
            started = time.process_time()
            times[v].append(run(v))
            cpu[v] += time.process_time() - started
    print(
        f"environment: python {platform.python_version()}, torch {torch.__version__}, "
        f"lightning {L.__version__}, {platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(
        f"setup: {args.rows} training rows, {args.val_rows} validation rows, N={n}, D={d}, "
        f"batch {args.batch}, hidden (256, 128), dropout 0.1, {args.epochs} epochs x "
        f"{args.repeats} rounds, introspective + control heads"
    )
    for v in variants:
        rounds = ", ".join(f"{t:.3f}" for t in times[v])
        print(
            f"{v:>9}: {statistics.median(times[v]):.3f} s per epoch (both heads; rounds: "
            f"{rounds}); process CPU {cpu[v] / (args.repeats * args.epochs):.3f} s per epoch"
        )
    for base in ("before", "separate"):
        ratios = [b / t for b, t in zip(times[base], times["together"], strict=True)]
        print(
            f"{base}/together per round: median {statistics.median(ratios):.2f}x "
            f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x; rounds: "
            + ", ".join(f"{x:.2f}" for x in ratios)
            + f"); CPU {cpu[base] / cpu['together']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
