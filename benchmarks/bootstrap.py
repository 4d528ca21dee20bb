"""Speed of the paired bootstrap at the size of a full CIFAR-10-C comparison.

75 corruption cells x 10,000 test images, 1/0 correctness of two heads, 10,000 stratified
resamples; then the same with three seeds scored on the same images (hierarchical), and an AUROC
difference of two detectors on 10,000 + 10,000 samples. Prints each time with the versions and
the machine. Usage::

    python benchmarks/bootstrap.py [--resamples 10000]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from introspect.metrics.paired import paired_auroc_difference, paired_mean_difference
from introspect.runs.provenance import device_description, package_versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=10_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    cells = np.repeat(np.arange(75), 10_000)
    shared = rng.random((3, cells.size))
    a = (shared < 0.72).astype(float)
    b = (shared + 0.05 * rng.random((3, cells.size)) < 0.71).astype(float)

    rows = []
    for label, x, y in (("1 seed", a[0], b[0]), ("3 seeds", a, b)):
        start = time.perf_counter()
        result = paired_mean_difference(x, y, strata=cells, resamples=args.resamples)
        rows.append((f"accuracy, 75 cells x 10,000 images, {label}", time.perf_counter() - start))
        print(f"{rows[-1][0]}: {result.format()} points, {rows[-1][1]:.2f} s")
    s_in, s_out = rng.normal(1.0, 1.0, 10_000), rng.normal(0.0, 1.0, 10_000)
    start = time.perf_counter()
    result = paired_auroc_difference(
        s_in,
        s_out,
        s_in + rng.normal(0, 0.5, 10_000),
        s_out + rng.normal(0, 0.5, 10_000),
        resamples=args.resamples,
    )
    rows.append(("AUROC, 10,000 ID + 10,000 OOD", time.perf_counter() - start))
    print(f"{rows[-1][0]}: {result.format()} points, {rows[-1][1]:.2f} s")
    print(
        json.dumps(
            {
                "resamples": args.resamples,
                "versions": package_versions(),
                "machine": device_description("cpu"),
            },
            default=str,
        )
    )


if __name__ == "__main__":
    main()
