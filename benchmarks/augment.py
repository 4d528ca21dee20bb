"""Augmented stage-2 extraction: the per-image path (before issue 12) against the batched one.

Both paths extract the gradient features of ``experiment=cifar10_resnet20``'s training images
(released ResNet-20, the 5,170 lossless images, AugMix severity 3, ``--passes`` passes, batches
of 256) in this one process, alternating pass by pass so that load on a shared machine hits
both alike:

- ``per-image``: every image augmented by torchvision's ``AugMix(severity=3, all_ops=False)``
  on its uint8 quantization under its own seeded global random stream
  (``SeededTransformDataset``), as stage 2 did before;
- ``batched``: ``BatchAugMix`` on each loaded batch, image ``i`` drawing from its own generator
  (``augment_batches``), as stage 2 does now.

Each path is timed for the whole pass (loading, augmentation, backbone, features: wall-clock
and this process's CPU time, the fairer measure on a loaded machine) and for the augmentation
alone (wall-clock). Needs ``../shared/data`` (or ``$INTROSPECT_SHARED_DATA``). Usage::

    python benchmarks/augment.py --threads 2 [--images 5170] [--passes 2]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Subset
from torchvision import transforms as T

from introspect.config import load_config
from introspect.data.augment import augment_batches, build_batch_augmentation, to_uint8
from introspect.data.images import IndexedDataset, SeededTransformDataset
from introspect.data.seeding import derive_seed
from introspect.gradients.batches import iter_features
from introspect.jobs.settings import train_settings
from introspect.stages.stage1 import build_backbone, build_data


class TorchvisionAugMix:
    """The per-image AugMix stage 2 used before: torchvision's on the uint8 image, as float."""

    def __init__(self, severity: int) -> None:
        self.augmix = T.AugMix(severity=severity, all_ops=False)

    def __call__(self, image: Tensor) -> Tensor:
        return self.augmix(to_uint8(image)).float().div_(255.0)


class Timed:
    """Wraps an augmentation callable and adds up the seconds spent in it."""

    def __init__(self, fn: Callable[..., Tensor]) -> None:
        self.fn = fn
        self.seconds = 0.0

    def __call__(self, *args: Any) -> Tensor:
        start = time.perf_counter()
        out = self.fn(*args)
        self.seconds += time.perf_counter() - start
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=5170)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(["experiment=cifar10_resnet20"])
    dm = build_data(train_settings(cfg).stage1)
    backbone = build_backbone(train_settings(cfg).stage1, dm.num_classes, dm.image_shape).eval()
    train = Subset(dm.split("train"), range(min(args.images, len(dm.split("train")))))
    severity = cfg.stage2.augmix_severity
    options = train_settings(cfg).stage2.features
    totals = {"per-image": [0.0, 0.0, 0.0], "batched": [0.0, 0.0, 0.0]}
    for pass_index in range(args.passes):
        seed = derive_seed(cfg.run.seed, "augmix", pass_index)
        for path in totals:
            if path == "per-image":
                aug = Timed(TorchvisionAugMix(severity))
                data = SeededTransformDataset(train, aug, seed=seed)
                batches = dm.loader(data, batch_size=args.batch_size)
            else:
                batch_aug = build_batch_augmentation(
                    "augmix", image_size=32, augmix_severity=severity
                )
                aug = Timed(batch_aug)
                loader = dm.loader(IndexedDataset(train), batch_size=args.batch_size)
                batches = augment_batches(loader, aug, seed)
            start, cpu_start = time.perf_counter(), time.process_time()
            n = sum(len(b["labels"]) for b in iter_features(
                backbone, batches, feature_options=options, progress=False))  # fmt: skip
            seconds = time.perf_counter() - start
            cpu = time.process_time() - cpu_start
            totals[path][0] += seconds
            totals[path][1] += aug.seconds
            totals[path][2] += cpu
            print(
                f"pass {pass_index} {path:9s}: {n} images, {seconds:7.1f} s "
                f"({n / seconds:6.1f} images/s), augmentation {aug.seconds:7.1f} s, "
                f"process CPU time {cpu:7.1f} s",
                flush=True,
            )
    (old, old_aug, old_cpu), (new, new_aug, new_cpu) = totals["per-image"], totals["batched"]
    print(
        f"\n{args.passes} passes of {len(train)} images, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}:\n"
        f"  extraction  per-image {old:.1f} s, batched {new:.1f} s: {old / new:.2f}x faster\n"
        f"  augmentation per-image {old_aug:.1f} s, batched {new_aug:.1f} s: "
        f"{old_aug / new_aug:.2f}x faster\n"
        f"  process CPU time per-image {old_cpu:.1f} s, batched {new_cpu:.1f} s: "
        f"{old_cpu / new_cpu:.2f}x less"
    )


if __name__ == "__main__":
    main()
