"""ImageNet-shaped stage 2: extraction, feature cache and one head epoch on factors.

Synthetic images (seeded, generated batch by batch) go through torchvision's ResNet-50 with
random weights (N = 1000 classes, D = 2048 head inputs) at low resolution; the features are
cached as factors (``FeatureCache``), loaded back into one tensor per field, and a low-rank
introspective head (``stage2.head.rank``) trains one epoch on them with index-sliced batches.
Prints bytes per image (factors on disk against the materialized 4·N·D feature, measured on a
few rows), peak RSS and images/s of each phase, and the versions/hardware. Usage::

    nice -n 10 python benchmarks/scale.py --images 20000 --image-size 32 --threads 2
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from introspect.data.batches import IndexedBatches
from introspect.gradients import extract
from introspect.gradients.batches import features_of, iter_features
from introspect.gradients.cache import FeatureCache
from introspect.models.stage2 import IntrospectiveClassifier


class ResNet50(nn.Module):
    """torchvision ResNet-50 (random weights) exposing its last linear layer as ``head``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torchvision.models.resnet50(weights=None, num_classes=1000)

    @property
    def head(self) -> nn.Linear:
        return self.net.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far, in GB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def batches(num: int, size: int, batch: int, seed: int):
    """``(images, labels)`` batches of ``num`` seeded synthetic images."""
    for start in range(0, num, batch):
        n = min(batch, num - start)
        g = torch.Generator().manual_seed(seed + start)
        yield torch.randn(n, 3, size, size, generator=g), torch.randint(0, 1000, (n,), generator=g)


def environment() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU used"
    return (
        f"python {platform.python_version()}, torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, {platform.system()} {platform.machine()}, {cpu} "
        f"({os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads), {gpu}"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256, help="extraction batch size")
    parser.add_argument("--shard-batches", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8, help="stage2.head.rank of the head")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 128])
    parser.add_argument("--head-batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default=None, help="cache folder (default: a temporary one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = ResNet50().eval()
    n_cls, dim = backbone.head.weight.shape
    print(f"environment: {environment()}", flush=True)
    print(
        f"setup: {args.images} synthetic {args.image_size}x{args.image_size} images, ResNet-50 "
        f"(random weights), N={n_cls}, D={dim}, default features (CE, all-ones target, L2)"
    )
    options = {"loss": "ce", "target": "ones", "per_class": False, "include_bias": False,
               "normalize": "l2"}  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(args.cache or tmp)
        shard = args.batch * args.shard_batches
        plan = cache.plan("scale", {"benchmark": "scale", **options, "images": args.images,
                                    "size": args.image_size},
                          num_samples=args.images, shard_size=shard)  # fmt: skip
        start = time.perf_counter()
        feats = iter_features(
            backbone,
            batches(args.images, args.image_size, args.batch, seed=1),
            feature_options=options,
            total=-(-args.images // args.batch),
            progress=False,
        )
        with torch.no_grad():
            cache.write_shards(plan, plan.missing, feats)
        cache.finish(plan)
        extract_s = time.perf_counter() - start
        folder = cache.entry_dir("scale")
        on_disk = sum(p.stat().st_size for p in folder.glob("shard-*.pt"))
        print(f"extraction + cache write: {extract_s:.1f} s, {args.images / extract_s:,.1f} "
              f"images/s (peak RSS so far {peak_rss_gb():.2f} GB)", flush=True)  # fmt: skip

        start = time.perf_counter()
        tensors = cache.load("scale")
        load_s = time.perf_counter() - start
        print(f"cache load (each shard hashed once, one tensor per field): {load_s:.1f} s, "
              f"{args.images / load_s:,.0f} images/s (peak RSS so far {peak_rss_gb():.2f} GB)",
              flush=True)  # fmt: skip

    # The materialized feature of the same images, measured on 8 rows as the cache stored
    # them before (torch.save of the float32 rows), for bytes per image.
    images, _ = next(batches(8, args.image_size, 8, seed=1))
    buffer = io.BytesIO()
    torch.save(extract(backbone, images, **options), buffer)
    materialized = buffer.getbuffer().nbytes / 8
    del buffer

    factors = features_of(tensors, num_classes=n_cls, normalize="l2", include_bias=False)
    torch.manual_seed(0)
    head = IntrospectiveClassifier(
        backbone, feature_options=options, num_classes=n_cls, in_dim=n_cls * dim,
        hidden=args.hidden, dropout=0.1, rank=args.rank,
    )  # fmt: skip
    head.train()
    opt = torch.optim.AdamW(head.head.parameters(), lr=1e-3, weight_decay=1e-4)
    start = time.perf_counter()
    for x, y in IndexedBatches(factors, tensors["labels"], batch_size=args.head_batch,
                               shuffle=True):  # fmt: skip
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(head.classify(x), y).backward()
        opt.step()
    epoch_s = time.perf_counter() - start
    first = sum(p.numel() for p in head.head[0].parameters())

    bound = 4 * (n_cls + dim) + 64
    print(f"bytes per image: factors on disk {on_disk / args.images:,.0f} (bound 4·(N+D)+64 = "
          f"{bound:,}); materialized {materialized:,.0f} (4·N·D = {4 * n_cls * dim:,}); "
          f"ratio {materialized / (on_disk / args.images):,.0f}x")  # fmt: skip
    print(f"stage-2 epoch (rank-{args.rank} head, first layer {first:,} weights instead of "
          f"{n_cls * dim * args.hidden[0]:,}): {epoch_s:.1f} s, {args.images / epoch_s:,.0f} "
          f"images/s")  # fmt: skip
    print(f"peak RSS: {peak_rss_gb():.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
