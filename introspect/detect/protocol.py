"""The protocol of supervised detectors: fit on one half of each set, report on the other."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from introspect.data.seeding import derive_seed
from introspect.metrics.ood import ood_metrics


@dataclass(frozen=True)
class Halves:
    """Disjoint row indices of one set: ``fit`` (training a detector) and ``held_out``."""

    fit: torch.Tensor
    held_out: torch.Tensor


def halves(origins: torch.Tensor, seed: int, name: str) -> Halves:
    """Split rows by their ``origins`` (e.g. the index of the clean image a row was made from):
    a seeded half of the distinct origins (``seed``, ``name``) is ``fit``, the rest
    ``held_out``, so rows made from one image stay on one side. Needs >= 2 distinct origins."""
    distinct = origins.unique()
    if len(distinct) < 2:
        raise ValueError(f"set {name!r} needs at least 2 samples to be split into halves")
    g = torch.Generator().manual_seed(derive_seed(seed, name))
    chosen = distinct[torch.randperm(len(distinct), generator=g)[: len(distinct) // 2]]
    in_fit = torch.isin(origins, chosen)
    rows = torch.arange(len(origins))
    return Halves(rows[in_fit], rows[~in_fit])


def held_out_metrics(
    features_in: torch.Tensor,
    features_out: torch.Tensor,
    split_in: Halves,
    split_out: Halves,
    fit: Callable[[torch.Tensor, torch.Tensor], Callable[[torch.Tensor], torch.Tensor]],
) -> dict[str, float]:
    """Fit a detector with ``fit(in_rows, out_rows)`` (returns a scoring function, higher = more
    in-distribution) on the ``fit`` rows and return its detection metrics on the held-out rows
    only: AUROC, AUPR-In/Out, FPR95 both ways (``fpr95_ood``, ``fpr95_id``) and detection
    accuracy (best threshold, equal priors)."""
    score = fit(features_in[split_in.fit], features_out[split_out.fit])
    values = ood_metrics(
        score(features_in[split_in.held_out]), score(features_out[split_out.held_out])
    )
    row = {m: float(values[m]) for m in ("auroc", "aupr_in", "aupr_out", "fpr95_ood", "fpr95_id")}
    row["detection_accuracy"] = 1.0 - float(values["detection_error"])
    return row
