"""The frozen network's inference passes in channels-last memory format against the default.

Times ``--rounds`` rounds of one forward pass (no autograd) of a batch of ``--batch-size``
random 32-px images through a CIFAR ResNet in eval mode, held in the default (NCHW) format and
with its weights in channels-last format (``trainer.channels_last``: the input stays NCHW, as
the pipeline feeds it), the two taking turns within each round so that load on a shared
machine hits both alike; prints the median time per pass, images/s, the median per-round ratio
and the largest logit difference between the formats. Usage::

    python benchmarks/channels_last.py --threads 2 [--depths 20 56] [--rounds 9]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch

from introspect.backbones.cifar_resnet import CifarResNet


def main(argv: list[str] | None = None) -> None:
    """Print the timing table (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--depths", type=int, nargs="+", default=[20, 56])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"python {sys.version.split()[0]}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, batch {args.batch_size}, {args.rounds} rounds"
    )
    print(
        "| network | NCHW s/pass | channels-last s/pass | NCHW img/s | channels-last img/s "
        "| ratio (median of rounds) | max logit diff |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    x = torch.rand(args.batch_size, 3, 32, 32)
    for depth in args.depths:
        nchw = CifarResNet(depth).eval()
        last = copy.deepcopy(nchw).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        times: dict[str, list[float]] = {"nchw": [], "last": []}
        with torch.no_grad():
            diff = (nchw(x) - last(x)).abs().max().item()
            nchw(x), last(x)  # warm-up
            for _ in range(args.rounds):
                for key, model in (("nchw", nchw), ("last", last)):
                    start = time.perf_counter()
                    model(x)
                    times[key].append(time.perf_counter() - start)
        ratio = statistics.median(a / b for a, b in zip(times["nchw"], times["last"], strict=True))
        a, b = statistics.median(times["nchw"]), statistics.median(times["last"])
        print(
            f"| ResNet-{depth} | {a:.3f} | {b:.3f} | {args.batch_size / a:,.0f} | "
            f"{args.batch_size / b:,.0f} | {ratio:.2f}× | {diff:.1e} |"
        )


if __name__ == "__main__":
    main()
