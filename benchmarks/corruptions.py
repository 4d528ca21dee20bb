"""Throughput of the CIFAR-10-C corruptions and of reading corrupted cells, side by side.

(1) For every corruption, images/s of ``corrupt`` over severities 1-5 on batches of 32x32
images (the 1,017 bit-exact CIFAR-10 test images when ``../shared/data`` is there, else random
images). (2) Reading all five cells of one corruption through ``CorruptedDataset`` with a loader:
computed on the fly, written to an empty cache, and read back from the cache; the ratios are
relative to the on-the-fly pass. Usage::

    python benchmarks/corruptions.py --threads 2 --device cpu
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from introspect.corruptions import NAMES, corrupt
from introspect.data.shifted import CorruptedDataset

SHARED = Path(os.environ.get("INTROSPECT_SHARED_DATA", Path(__file__).parents[2] / "shared/data"))


def test_images(n: int) -> tuple[torch.Tensor, str]:
    """``n`` CIFAR test images in [0, 1] (random ones when the shared data is absent)."""
    path = SHARED / "cifar10-test-lossless-1017.npz"
    if path.is_file():
        x = np.load(path)["x"][:n]
        return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255, f"{len(x)} CIFAR images"
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 32, 32, generator=gen), f"{n} random images"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def corruption_throughput(
    images: torch.Tensor, device: torch.device, batch: int
) -> dict[str, float]:
    """Images/s of each corruption over all five severities (after one untimed warm-up)."""
    x = images.to(device)
    out: dict[str, float] = {}
    for name in NAMES:
        corrupt(x[:batch], name, 1)  # warm-up (frost reads its photographs once)
        _sync(device)
        start = time.perf_counter()
        for severity in range(1, 6):
            for i in range(0, len(x), batch):
                corrupt(x[i : i + batch], name, severity, seed=i)
        _sync(device)
        out[name] = 5 * len(x) / (time.perf_counter() - start)
    return out


def read_cells(base: TensorDataset, name: str, cache: str | None, batch: int) -> float:
    """Seconds to read all five cells of ``name`` through ``CorruptedDataset`` and a loader."""
    start = time.perf_counter()
    for severity in range(1, 6):
        ds = CorruptedDataset(base, name, severity, chunk_size=256, cache_dir=cache)
        for _ in DataLoader(ds, batch_size=batch):
            pass
    return time.perf_counter() - start


def main() -> None:
    """Print both tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=1017)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images, what = test_images(args.n)
    print(f"# corrupt(): {what}, batch {args.batch}, {device}, {args.threads} threads")
    rates = corruption_throughput(images, device, args.batch)
    print("| corruption | images/s |\n|---|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} |")
    total = sum(5 * len(images) / r for r in rates.values())
    print(f"| **all 75 cells** | {75 * len(images) / total:,.0f} ({total:.1f} s) |")

    base = TensorDataset(images, torch.zeros(len(images), dtype=torch.long))
    print("\n# CorruptedDataset, five cells of each of two corruptions, CPU")
    print("| corruption | on the fly (s) | first pass, writing cache | cached read |")
    print("|---|---:|---:|---:|")
    for name in ("glass_blur", "gaussian_noise"):
        fly = read_cells(base, name, None, args.batch)
        with tempfile.TemporaryDirectory() as tmp:
            write = read_cells(base, name, tmp, args.batch)
            hit = read_cells(base, name, tmp, args.batch)
        print(f"| {name} | {fly:.2f} | {write:.2f} ({write / fly:.2f}x) | {hit:.2f} "
              f"({hit / fly:.2f}x) |")  # fmt: skip


if __name__ == "__main__":
    main()
