"""Throughput of gradient-feature extraction against a plain forward pass.

On the same random 32x32 batches (eval mode), images/s of: (1) the forward pass, (2) ``extract``
(all-ones CE, last layer, L2), (3) a per-sample autograd loop for the last-layer weight and (4)
``torch.func`` ``vmap(grad)`` over all parameters; (3) and (4) run on a subset of each batch and are
scaled to images/s. Torchvision models get the CIFAR stem. Usage::

    python benchmarks/features.py --threads 2 --device cpu
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from introspect.backbones import load_backbone
from introspect.backbones.torchvision_models import torchvision_names
from introspect.gradients import extract, per_sample_grads


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_batch(
    fn: Callable[[torch.Tensor], object],
    batches: list[torch.Tensor],
    warmup: int,
    device: torch.device,
) -> float:
    """Median seconds of ``fn`` over ``batches`` after ``warmup`` untimed calls."""
    for i in range(warmup):
        fn(batches[i % len(batches)])
    _sync(device)
    times = []
    for batch in batches:
        start = time.perf_counter()
        fn(batch)
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def loop_head_grads(model: nn.Module, head: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The naive reference: one forward and one autograd call per image."""
    rows = []
    ones = torch.ones(1, head.out_features, device=x.device)
    for i in range(x.shape[0]):
        loss = F.cross_entropy(model(x[i : i + 1]), ones)
        (g,) = torch.autograd.grad(loss, head.weight)
        rows.append(g.flatten())
    return torch.stack(rows)


def bench_model(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Images/s of every method for one backbone."""
    cifar_stem = name in torchvision_names()  # 3x3 stride-1 stem for 32x32 inputs
    model = load_backbone(name, num_classes=args.num_classes, cifar_stem=cifar_stem)
    model = model.to(device).eval()
    head = model.head
    gen = torch.Generator().manual_seed(0)
    batches = [
        torch.randn(args.batch_size, 3, 32, 32, generator=gen).to(device)
        for _ in range(args.repeats)
    ]
    subsets = [b[: args.subset] for b in batches]
    names = [n for n, _ in model.named_parameters()]

    def forward(x: torch.Tensor) -> object:
        with torch.inference_mode():
            return model(x)

    def features(x: torch.Tensor) -> object:
        with torch.inference_mode():
            return extract(model, x, head=head)

    def vmap_all(x: torch.Tensor) -> object:
        return per_sample_grads(model, x, params=names, chunk_size=args.chunk_size)

    b, s = args.batch_size, args.subset
    return {
        "forward": b / time_per_batch(forward, batches, args.warmup, device),
        "extract": b / time_per_batch(features, batches, args.warmup, device),
        "loop": s / time_per_batch(lambda x: loop_head_grads(model, head, x), subsets, 1, device),
        "vmap(grad) all params": s / time_per_batch(vmap_all, subsets, 1, device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "cifar_resnet20"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5, help="timed batches (median taken)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--subset", type=int, default=16, help="images per batch for (3), (4)")
    parser.add_argument("--chunk-size", type=int, default=8, help="vmap chunk for (4)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"device={device} threads={torch.get_num_threads()} batch={args.batch_size} "
        f"repeats={args.repeats} warmup={args.warmup} subset={args.subset} "
        f"chunk={args.chunk_size} torch={torch.__version__}"
    )
    header = f"{'model':<16}{'method':<24}{'images/s':>12}{'x forward':>12}"
    print(header)
    print("-" * len(header))
    for name in args.models:
        rates = bench_model(name, args, device)
        for method, rate in rates.items():
            print(f"{name:<16}{method:<24}{rate:>12.1f}{rate / rates['forward']:>12.3f}")


if __name__ == "__main__":
    main()
