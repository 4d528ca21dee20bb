"""Per-image records of an evaluation (``predictions.npz``) and the paired bootstrap intervals of
the accuracy and ECE differences read from them (``introspect.metrics.paired``).

``predictions.npz`` holds, for every evaluated split, the label of each test image
(``<split>/labels``), whether each head's top-1 prediction was right (``<split>/<head>``, 1/0)
and its top-1 confidence (``<split>/<head>.confidence``, float32; records written before it
existed lack it, and then have no ECE intervals), in dataset order, so heads (and seeds
evaluated on the same images) stay paired. NumPy only: no torch import.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from introspect.corruptions.cells import is_cell
from introspect.metrics.paired import (
    PairedDifference,
    paired_ece_differences,
    paired_mean_difference,
)

PREDICTIONS = "predictions.npz"
# The key of the labels among the per-image arrays of a split (no head is called so).
LABELS = "labels"
# The suffix of a head's per-image top-1 confidences among the arrays of a split.
CONFIDENCE = ".confidence"
# Equal-width bins of every ECE (``metrics.classification_metrics``' default).
N_BINS = 15
# Head minus baseline: introspection against the feed-forward network and the controls (on h,
# and on [h, p]), untempered and tempered.
PAIRS = (
    ("introspective", "feedforward"),
    ("introspective", "control"),
    ("introspective", "control_hp"),
    ("introspective_ts", "feedforward_ts"),
    ("introspective_ts", "control_ts"),
    ("introspective_ts", "control_hp_ts"),
)
# The bootstrap of every reported interval: fixed, so records are deterministic.
RESAMPLES, LEVEL, SEED = 10_000, 0.95, 0

PerImage = Mapping[str, Mapping[str, np.ndarray]]


class PredictionsError(ValueError):
    """A predictions file that cannot be read as one; the message names it."""


def write_predictions(path: Path, per_image: PerImage) -> None:
    """Write ``{split: {head or "labels": array}}`` to ``path`` (compressed ``.npz``, keys
    ``<split>/<head>``) atomically: a temporary file in the same folder, then renamed."""
    arrays = {f"{s}/{k}": np.asarray(a) for s, e in per_image.items() for k, a in e.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_predictions(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """``{split: {head or "labels": array}}`` from the ``predictions.npz`` at ``path`` (never
    unpickles); ``PredictionsError`` when it is no such file."""
    out: dict[str, dict[str, np.ndarray]] = {}
    try:
        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                split, _, name = key.rpartition("/")
                array = data[key]
                if not split or array.ndim != 1:
                    raise ValueError(f"unexpected entry {key!r}")
                out.setdefault(split, {})[name] = array
    except (OSError, ValueError) as err:
        raise PredictionsError(f"{path} is not a predictions file of introspect ({err})") from None
    if any(LABELS not in e for e in out.values()):
        raise PredictionsError(f"{path} lacks the labels of a split")
    return out


def scopes(per_image: PerImage) -> dict[str, tuple[dict[str, np.ndarray], np.ndarray | None]]:
    """``{scope: ({head or "labels": array}, strata)}``: ``clean`` (the clean split, no strata)
    and ``corrupted`` (every ``<corruption>/<severity>`` cell pooled, in sorted order; strata:
    the cell index of each image), where present."""
    out: dict[str, tuple[dict[str, np.ndarray], np.ndarray | None]] = {}
    if "clean" in per_image:
        out["clean"] = (dict(per_image["clean"]), None)
    cells = sorted(s for s in per_image if is_cell(s))
    if cells:
        keys = [k for k in per_image[cells[0]] if all(k in per_image[c] for c in cells)]
        pooled = {k: np.concatenate([per_image[c][k] for c in cells]) for k in keys}
        sizes = [len(per_image[c][LABELS]) for c in cells]
        strata = np.repeat(np.arange(len(cells)), sizes)
        out["corrupted"] = (pooled, strata)
    return out


def pair_differences(
    correct: Mapping[str, np.ndarray],
    strata: np.ndarray | None,
    pairs: Sequence[tuple[str, str]] = PAIRS,
) -> dict[tuple[str, str], PairedDifference]:
    """The accuracy difference of every pair ``(head, baseline)`` whose heads are both in
    ``correct`` (1/0 per image, ``(n,)``, or ``(seeds, n)`` for seeds scored on the same images),
    with its paired bootstrap interval (stratified by ``strata``; ``RESAMPLES``, ``LEVEL``,
    ``SEED``)."""
    return {
        (head, base): paired_mean_difference(
            correct[head], correct[base], strata=strata, resamples=RESAMPLES, level=LEVEL, seed=SEED
        )
        for head, base in pairs
        if head in correct and base in correct
    }


def confidence_key(head: str) -> str:
    """The key of ``head``'s per-image top-1 confidences among the arrays of a split."""
    return f"{head}{CONFIDENCE}"


def ece_differences(
    arrays: Mapping[str, np.ndarray],
    strata: np.ndarray | None,
    pairs: Sequence[tuple[str, str]] = PAIRS,
) -> dict[tuple[str, str], PairedDifference]:
    """The ECE difference of every pair ``(head, baseline)`` whose heads both have correctness
    and confidences in ``arrays`` (``(n,)`` or ``(seeds, n)``), with its paired bootstrap
    interval (images resampled within ``strata``, both ECEs recomputed on each resample;
    ``N_BINS`` bins, ``RESAMPLES``, ``LEVEL``, ``SEED``)."""
    have = [
        (h, b) for h, b in pairs if all(k in arrays and confidence_key(k) in arrays for k in (h, b))
    ]
    if not have:
        return {}
    heads = {k for pair in have for k in pair}
    return paired_ece_differences(
        {k: arrays[confidence_key(k)] for k in heads},
        {k: arrays[k] for k in heads},
        have,
        strata=strata,
        n_bins=N_BINS,
        resamples=RESAMPLES,
        level=LEVEL,
        seed=SEED,
    )


def as_record(diff: PairedDifference) -> dict[str, Any]:
    """``{"estimate", "low", "high", "verdict"}`` of ``diff`` (fractions, not points)."""
    return {"estimate": diff.estimate, "low": diff.low, "high": diff.high, "verdict": diff.verdict}


def head_differences(per_image: PerImage) -> dict[str, Any]:
    """The ``differences`` block of a record: ``{"resamples", "level", "seed", "n_bins",
    <scope>: {"<head>-<baseline>": {"acc": as_record(...), "ece": as_record(...)}}}`` for the
    scopes of :func:`scopes` (``ece`` where both heads have confidences)."""
    out: dict[str, Any] = {"resamples": RESAMPLES, "level": LEVEL, "seed": SEED, "n_bins": N_BINS}
    for scope, (arrays, strata) in scopes(per_image).items():
        diffs = pair_differences(arrays, strata)
        block = {f"{h}-{b}": {"acc": as_record(d)} for (h, b), d in diffs.items()}
        for (h, b), d in ece_differences(arrays, strata).items():
            block[f"{h}-{b}"]["ece"] = as_record(d)
        out[scope] = block
    return out
