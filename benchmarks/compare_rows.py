"""The full-training-set rows (docs/results) from one group's ``evaluate.py compare`` output.

Reads ``comparison.csv`` (one row: three seeds pooled) and prints the clean, ``jpeg_q75`` and
corruption-mean rows as ``split | FF | FF+TS | INT | INT+TS | CTL | CTL+TS | INT−FF | INT−CTL``,
each cell accuracy / ECE in %, ``mean ± std`` where the seeds differ. Usage::

    python benchmarks/compare_rows.py OUT/compare-resnet20-augmix/comparison.csv
"""

from __future__ import annotations

import csv
import sys

SPLITS = {
    "clean": "clean (508)",
    "jpeg_q75": "`jpeg_q75` (10,000)",
    "corrupted": "corrupted (75 cells)",
}
HEADS = ("FF", "FF+TS", "INT", "INT+TS", "CTL", "CTL+TS")


def rows(path: str) -> list[str]:
    """The table's header, rule and one line per split of the single run group in ``path``."""
    with open(path, newline="") as f:
        groups = list(csv.DictReader(f))
    if len(groups) != 1:
        raise SystemExit(f"{path}: expected one run group, found {len(groups)}")
    r = groups[0]

    def value(key: str) -> float:
        return 100 * float(r[key])

    def cell(split: str, head: str) -> str:
        acc, ece = value(f"{split}/{head}/acc_mean"), value(f"{split}/{head}/ece_mean")
        sa, se = value(f"{split}/{head}/acc_std"), value(f"{split}/{head}/ece_std")
        if sa == 0 and se == 0:
            return f"{acc:.2f} / {ece:.2f}"
        return f"{acc:.2f} ± {sa:.2f} / {ece:.2f} ± {se:.2f}"

    def diff(split: str, name: str) -> str:
        acc, ece = value(f"{split}/{name}/acc_mean"), value(f"{split}/{name}/ece_mean")
        return f"{acc:+.2f} / {ece:+.2f}".replace("-", "−")

    out = [
        "| split | " + " | ".join(HEADS) + " | INT−FF | INT−CTL |",
        "|---|" + "---|" * (len(HEADS) + 2),
    ]
    for split, label in SPLITS.items():
        cells = " | ".join(cell(split, h) for h in HEADS)
        out.append(f"| {label} | {cells} | {diff(split, 'INT-FF')} | {diff(split, 'INT-CTL')} |")
    return out


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print("\n".join(rows(path)))
