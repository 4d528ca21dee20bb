"""Time of fitting a temperature (``introspect.metrics.fit_temperature``) on n logits of N
classes, against torch's LBFGS on log T (the textbook recipe) reaching the same optimum.

Logits are random, scaled to be overconfident; each fit is repeated and the median printed.
Usage::

    python benchmarks/temperature.py --threads 2 --samples 10000 --classes 10 100
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from introspect.metrics import fit_temperature


def _logits(n: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(n, classes, generator=g)
    logits[torch.arange(n), labels] += 2.0
    return 4 * logits, labels


def lbfgs_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """LBFGS (strong Wolfe line search) on log T, float64."""
    z = logits.double()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [log_t], lr=1.0, max_iter=100, tolerance_grad=1e-12, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def _median_seconds(fn, repeats: int) -> tuple[float, float]:
    times, value = [], 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.samples} logits per fit")
    print("| classes | fit_temperature (s) | T | LBFGS on log T (s) | T (LBFGS) |")
    print("|---:|---:|---:|---:|---:|")
    for classes in args.classes:
        z, y = _logits(args.samples, classes)
        ours, t = _median_seconds(lambda z=z, y=y: fit_temperature(z, y), args.repeats)
        lbfgs, t2 = _median_seconds(lambda z=z, y=y: lbfgs_temperature(z, y), args.repeats)
        print(f"| {classes} | {ours:.4f} | {t:.6f} | {lbfgs:.4f} | {t2:.6f} |")


if __name__ == "__main__":
    main()
