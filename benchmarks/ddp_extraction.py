"""Stage-2 feature-extraction throughput with 1 and 2 processes (DDP), side by side.

One measurement is a cold-cache extraction of the train split of a synthetic 32x32 dataset
through ``runs.stage2.split_features``: every process extracts its block of shards and writes
them, then every process checks and loads the whole entry (what a run does). It runs in a fresh
subprocess started as ``train.py`` starts, so Lightning's ddp launcher re-runs this script for
the other processes. CPU always (2 processes share the machine's cores: one thread each instead
of all of them for one process); CUDA too when a GPU is present (1 and ``min(2, GPUs)``
processes). Images/s counts the images of the train split over the wall time of the slowest
process. Usage::

    python benchmarks/ddp_extraction.py --images 4096 --rounds 3 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

MARKER = "RESULT "


def measure(args: argparse.Namespace) -> None:
    """One configuration, run by every process of it; rank zero prints one result line."""
    from introspect.config import load_config
    from introspect.gradients.cache import FeatureCache, weights_digest
    from introspect.jobs.settings import train_settings
    from introspect.runs.distributed import barrier, is_global_zero, launch
    from introspect.runs.trainer import resolve_device
    from introspect.stages.heads import split_features
    from introspect.stages.stage1 import build_backbone, build_data

    cfg = load_config(
        [
            "data=synthetic",
            f"data.num_samples={args.images}",
            "data.image_size=32",
            f"backbone={args.backbone}",
            f"stage2.extract_batch_size={args.batch_size}",
            f"stage2.shard_batches={args.shard_batches}",
            f"trainer.accelerator={args.accelerator}",
            f"trainer.devices={args.processes}",
            "trainer.strategy=ddp",
        ]
    )
    L.seed_everything(cfg.run.seed, verbose=False)  # the same weights in every process
    settings = train_settings(cfg)
    dm = build_data(settings.stage1)
    backbone = build_backbone(settings.stage1, dm.num_classes, dm.image_shape)
    launch(settings.job.trainer, settings.job.run)
    backbone.eval().to(resolve_device(cfg.trainer.accelerator))
    digest = weights_digest(backbone)
    images = len(dm.split("train"))
    for repeat in range(args.repeats + 1):  # the first one warms up and is not reported
        cache = FeatureCache(Path(args.cache) / f"{args.accelerator}-{args.processes}-{repeat}")
        barrier()
        start = time.perf_counter()
        split_features(dm, backbone, "train", settings=settings.stage2, cache=cache, digest=digest)
        barrier()
        seconds = time.perf_counter() - start
        if is_global_zero() and repeat > 0:
            print(MARKER + json.dumps({"images": images, "seconds": seconds}), flush=True)


def run_configuration(args: argparse.Namespace, accelerator: str, processes: int) -> list[float]:
    """Images/s of every timed repeat of one configuration (its own subprocess)."""
    with tempfile.TemporaryDirectory() as cache:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--measure",
            f"--accelerator={accelerator}",
            f"--processes={processes}",
            f"--images={args.images}",
            f"--backbone={args.backbone}",
            f"--batch-size={args.batch_size}",
            f"--shard-batches={args.shard_batches}",
            f"--repeats={args.repeats}",
            f"--cache={cache}",
        ]
        proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{accelerator} x{processes} failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line[len(MARKER) :]) for line in proc.stdout.splitlines()]
    return [r["images"] / r["seconds"] for r in rows if r]


def main() -> None:
    """Measure every configuration and print images/s side by side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096, help="synthetic images in all")
    parser.add_argument("--backbone", default="cifar_resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--shard-batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats (after a warm-up)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds over all configurations (interleaved)"
    )
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--accelerator", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args)
        return
    setups = [("cpu", 1), ("cpu", 2)]
    if torch.cuda.is_available():
        setups += [("gpu", 1)] + ([("gpu", 2)] if torch.cuda.device_count() > 1 else [])
    # Rounds alternate the configurations, so a change in the machine's load hits all of them.
    rates: dict[tuple[str, int], list[float]] = {setup: [] for setup in setups}
    for _ in range(args.rounds):
        for setup in setups:
            rates[setup] += run_configuration(args, *setup)
    print(
        f"{args.backbone}, {args.images} synthetic 32x32 images (train split 72%), "
        f"batch {args.batch_size}, {args.shard_batches} batches per shard; images/s: median "
        f"(min-max) of {args.rounds} x {args.repeats} cold-cache extractions"
    )
    print(f"{'device':<8}{'processes':>10}{'images/s':>12}{'min-max':>16}{'speed-up':>10}")
    base: dict[str, float] = {}
    for (accelerator, processes), values in rates.items():
        rate = statistics.median(values)
        base.setdefault(accelerator, rate)
        spread = f"{min(values):.0f}-{max(values):.0f}"
        print(
            f"{accelerator:<8}{processes:>10}{rate:>12.1f}{spread:>16}"
            f"{rate / base[accelerator]:>9.2f}x"
        )


if __name__ == "__main__":
    main()
