"""Two questions of issue 31 in one table: does the introspective head give smaller conformal
sets at the same coverage under corruption than the feed-forward network and the control head,
and does it lower the selective risk at a fixed coverage?

From the logits of every head on a calibration split and on each evaluation split (clean and
corrupted), for one or several stage-2 seeds, :func:`conformal_selective_table` reports per head
(optionally with a temperature fitted on the calibration split) and split: coverage and mean
size of split-conformal APS (randomized) and THR sets at level ``alpha``, AURC, AUGRC and the
selective risk at a fixed coverage; and paired-bootstrap intervals of the target head minus
each reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from introspect.metrics.conformal import SplitConformal, set_coverage, set_size
from introspect.metrics.paired import PairedDifference, paired_mean_difference
from introspect.metrics.selective import augrc, aurc, selective_risk
from introspect.metrics.temperature import fit_temperature, temper

__all__ = [
    "QuestionDifference",
    "QuestionRow",
    "QuestionTable",
    "RunLogits",
    "conformal_selective_table",
]

# Metric name -> (per-image, higher is better, scale for display).
METRICS: dict[str, tuple[bool, bool, float]] = {
    "APS coverage": (True, True, 100.0),
    "APS size": (True, False, 1.0),
    "THR coverage": (True, True, 100.0),
    "THR size": (True, False, 1.0),
    "AURC": (False, False, 100.0),
    "AUGRC": (False, False, 100.0),
    "selective risk": (False, False, 100.0),
}


@dataclass(frozen=True)
class RunLogits:
    """One stage-2 seed's logits: ``calibration[head]`` ``(n_cal, classes)`` with
    ``calibration_labels``; ``splits[split][head]`` ``(n_split, classes)`` with
    ``labels[split]``. Every seed must score the same images in the same order."""

    calibration: Mapping[str, torch.Tensor]
    calibration_labels: torch.Tensor
    splits: Mapping[str, Mapping[str, torch.Tensor]]
    labels: Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class QuestionRow:
    """One head's value of one metric on one split, the mean over seeds (fractions for
    coverages and risks, classes for sizes)."""

    head: str
    split: str
    metric: str
    value: float


@dataclass(frozen=True)
class QuestionDifference:
    """``target − reference`` of one metric on one split, with its paired-bootstrap interval."""

    target: str
    reference: str
    split: str
    metric: str
    difference: PairedDifference


@dataclass(frozen=True)
class QuestionTable:
    """Rows per (head, split, metric), differences per (comparison, split, metric)."""

    rows: tuple[QuestionRow, ...]
    differences: tuple[QuestionDifference, ...]
    alpha: float
    coverage: float
    seeds: int

    def value(self, head: str, split: str, metric: str) -> float:
        """The row of ``head``, ``split`` and ``metric``."""
        for row in self.rows:
            if (row.head, row.split, row.metric) == (head, split, metric):
                return row.value
        raise KeyError((head, split, metric))

    def markdown(self) -> str:
        """The values (one table per split) and the differences, as Markdown."""
        heads = list(dict.fromkeys(r.head for r in self.rows))
        splits = list(dict.fromkeys(r.split for r in self.rows))
        names = _names(self.coverage)
        out = [
            f"Split-conformal sets at alpha = {self.alpha:g} (target coverage "
            f"{100 * (1 - self.alpha):g} %); coverages, risks, AURC and AUGRC in %, sizes in "
            f"classes; selective risk at {100 * self.coverage:g} % coverage; means over "
            f"{self.seeds} stage-2 seed(s).",
            "",
        ]
        for split in splits:
            out += [f"**{split}**", "", "| head | " + " | ".join(names.values()) + " |"]
            out.append("|---" * (len(names) + 1) + "|")
            for head in heads:
                cells = [f"{METRICS[m][2] * self.value(head, split, m):.2f}" for m in names]
                out.append(f"| {head} | " + " | ".join(cells) + " |")
            out.append("")
        out += [
            "Differences (target − reference), 95 % paired-bootstrap intervals over images and "
            "seeds; verdict from the interval:",
            "",
            "| split | comparison | metric | difference [95 % CI] | verdict |",
            "|---|---|---|---|---|",
        ]
        for d in self.differences:
            out.append(
                f"| {d.split} | {d.target} − {d.reference} | {names[d.metric]} | "
                f"{d.difference.format(METRICS[d.metric][2])} | {d.difference.verdict} |"
            )
        return "\n".join(out) + "\n"


def _names(coverage: float) -> dict[str, str]:
    return {m: m if m != "selective risk" else f"risk@{100 * coverage:g}%" for m in METRICS}


def _per_image(
    cal: torch.Tensor, cal_labels: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
    alpha: float, coverage: float,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:  # fmt: skip
    """Per-image set coverages and sizes, confidences and correctness of one head."""
    cal_p = torch.softmax(cal.double(), dim=1)
    probs = torch.softmax(logits.double(), dim=1)
    values: dict[str, np.ndarray] = {}
    for method in ("aps", "thr"):
        # APS randomized (one uniform per input, seeded): without it a confident network's
        # true-class score is its whole top-1 mass and the sets balloon.
        conformal = SplitConformal(method, alpha, randomized=method == "aps", seed=0)
        sets = conformal.fit(cal_p, cal_labels).predict(probs)
        values[f"{method.upper()} coverage"] = set_coverage(sets, labels).numpy()
        values[f"{method.upper()} size"] = set_size(sets).numpy()
    conf, pred = probs.max(dim=1)
    return values, conf.numpy(), (pred == labels).numpy().astype(np.float64)


def _ranking(conf: np.ndarray, ok: np.ndarray, coverage: float) -> dict[str, float]:
    return {
        "AURC": aurc(conf, ok),
        "AUGRC": augrc(conf, ok),
        "selective risk": selective_risk(conf, ok, coverage),
    }


def _paired_ranking(
    a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], coverage: float,
    resamples: int, seed: int,
) -> dict[str, PairedDifference]:  # fmt: skip
    """Bootstrap of the ranking metrics' difference: images drawn once per resample (shared
    by the seeds and heads), then seeds drawn with replacement."""
    (conf_a, ok_a), (conf_b, ok_b) = a, b
    seeds, n = conf_a.shape
    rng = np.random.default_rng(seed)

    def diff(rows: np.ndarray, idx: np.ndarray) -> dict[str, float]:
        out = dict.fromkeys(("AURC", "AUGRC", "selective risk"), 0.0)
        for s in rows:
            ra = _ranking(conf_a[s, idx], ok_a[s, idx], coverage)
            rb = _ranking(conf_b[s, idx], ok_b[s, idx], coverage)
            for k in out:
                out[k] += (ra[k] - rb[k]) / len(rows)
        return out

    estimate = diff(np.arange(seeds), np.arange(n))
    replicates = [
        diff(rng.integers(seeds, size=seeds) if seeds > 1 else np.zeros(1, int),
             rng.integers(n, size=n))
        for _ in range(resamples)
    ]  # fmt: skip
    result = {}
    for k, e in estimate.items():
        low, high = np.quantile([r[k] for r in replicates], [0.025, 0.975])
        result[k] = PairedDifference(e, float(low), float(high), 0.95, resamples, False)
    return result


def _per_image_values(
    runs: Sequence[RunLogits],
    heads: list[str],
    splits: list[str],
    alpha: float,
    coverage: float,
    *,
    tempered: bool,
) -> dict[str, dict[str, tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]]]:
    """``[head][split] = (metric -> (seeds, n) per-image values, confidences (seeds, n),
    correctness (seeds, n))`` of every head (and, with ``tempered``, its ``+TS`` twin)."""
    # per[head][split] = (metric -> (seeds, n) per-image values, conf (seeds, n), ok (seeds, n))
    per: dict[str, dict[str, tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]]] = {}
    for run in runs:
        if list(run.calibration) != heads or list(run.splits) != splits:
            raise ValueError("every run must hold the same heads and splits")
        variants: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
        for h in heads:
            cal = run.calibration[h]
            variants[h] = (cal, {s: run.splits[s][h] for s in splits})
            if tempered:
                t = fit_temperature(cal, run.calibration_labels)
                variants[f"{h}+TS"] = (
                    temper(cal, t),
                    {s: temper(run.splits[s][h], t) for s in splits},
                )
        for h, (cal, logits) in variants.items():
            for s in splits:
                values, conf, ok = _per_image(
                    cal, run.calibration_labels, logits[s], run.labels[s], alpha, coverage
                )
                acc = per.setdefault(h, {}).setdefault(s, ({}, [], []))  # type: ignore[arg-type]
                for m, v in values.items():
                    acc[0].setdefault(m, []).append(v)  # type: ignore[attr-defined]
                acc[1].append(conf)  # type: ignore[attr-defined]
                acc[2].append(ok)  # type: ignore[attr-defined]
    return {
        h: {s: ({m: np.stack(v) for m, v in d.items()}, np.stack(c), np.stack(o))
            for s, (d, c, o) in by_split.items()}
        for h, by_split in per.items()
    }  # fmt: skip


def conformal_selective_table(
    runs: Sequence[RunLogits],
    *,
    alpha: float = 0.1,
    coverage: float = 0.8,
    target: str = "INT",
    references: Sequence[str] = ("FF", "CTL"),
    tempered: bool = True,
    resamples: int = 1000,
    seed: int = 0,
) -> QuestionTable:
    """The conformal and selective-classification table of ``runs`` (one per stage-2 seed).

    With ``tempered``, every head also appears as ``<head>+TS`` (temperature fitted on that
    seed's calibration logits), compared as ``<target>+TS − <reference>+TS``. Per-image
    metrics (set coverage and size) get :func:`paired_mean_difference` intervals; AURC, AUGRC
    and the selective risk a paired bootstrap of the whole statistic (``resamples`` draws)."""
    if not runs:
        raise ValueError("runs must hold at least one seed's logits")
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    heads = list(runs[0].calibration)
    missing = [h for h in (target, *references) if h not in heads]
    if missing:
        raise ValueError(f"heads {missing} missing from the logits (have {heads})")
    splits = list(runs[0].splits)
    stacked = _per_image_values(runs, heads, splits, alpha, coverage, tempered=tempered)
    rows: list[QuestionRow] = []
    for h, by_split in stacked.items():
        for s, (values, conf, ok) in by_split.items():
            ranking = [_ranking(conf[i], ok[i], coverage) for i in range(len(runs))]
            for m in METRICS:
                if METRICS[m][0]:
                    v = float(values[m].mean())
                else:
                    v = float(np.mean([r[m] for r in ranking]))
                rows.append(QuestionRow(h, s, m, v))
    pairs = [(target, r) for r in references]
    if tempered:
        pairs += [(f"{target}+TS", f"{r}+TS") for r in references]
    differences: list[QuestionDifference] = []
    for a, b in pairs:
        for s in splits:
            va, ca, oa = stacked[a][s]
            vb, cb, ob = stacked[b][s]
            ranked = _paired_ranking((ca, oa), (cb, ob), coverage, resamples, seed)
            for m, (per_image, higher, _) in METRICS.items():
                d = (
                    paired_mean_difference(
                        va[m], vb[m], resamples=resamples, seed=seed, higher_is_better=higher
                    )
                    if per_image
                    else ranked[m]
                )
                differences.append(QuestionDifference(a, b, s, m, d))
    return QuestionTable(tuple(rows), tuple(differences), alpha, coverage, len(runs))
