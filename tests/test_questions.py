"""The conformal and selective question table on synthetic logits of three heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from introspect.metrics.conformal import SplitConformal, set_size
from introspect.metrics.questions import RunLogits, conformal_selective_table
from introspect.metrics.selective import aurc


def _run(seed: int, n_cal: int = 300, n: int = 400) -> RunLogits:
    g = torch.Generator().manual_seed(seed)
    labels = {"cal": torch.randint(0, 5, (n_cal,), generator=g),
              "clean": torch.randint(0, 5, (n,), generator=g)}  # fmt: skip

    def logits(y: torch.Tensor, signal: float) -> torch.Tensor:
        z = torch.randn(len(y), 5, generator=g, dtype=torch.float64)
        z[torch.arange(len(y)), y] += signal
        return z

    strength = {"FF": 1.0, "INT": 3.0, "CTL": 1.0}  # INT separates the classes far better
    return RunLogits(
        calibration={h: logits(labels["cal"], s) for h, s in strength.items()},
        calibration_labels=labels["cal"],
        splits={"clean": {h: logits(labels["clean"], s) for h, s in strength.items()}},
        labels={"clean": labels["clean"]},
    )


def test_table_values_and_verdicts() -> None:
    runs = [_run(0), _run(1)]
    table = conformal_selective_table(runs, resamples=100)
    # Rows are the seed means of directly computed quantities.
    sizes, areas = [], []
    for run in runs:
        cal = torch.softmax(run.calibration["INT"], 1)
        probs = torch.softmax(run.splits["clean"]["INT"], 1)
        aps = SplitConformal("aps", 0.1, randomized=True, seed=0)
        sets = aps.fit(cal, run.calibration_labels).predict(probs)
        sizes.append(set_size(sets).mean().item())
        conf, pred = probs.max(1)
        areas.append(aurc(conf.numpy(), (pred == run.labels["clean"]).numpy()))
    assert table.value("INT", "clean", "APS size") == pytest.approx(np.mean(sizes))
    assert table.value("INT", "clean", "AURC") == pytest.approx(np.mean(areas))
    heads = {r.head for r in table.rows}
    assert heads == {"FF", "INT", "CTL", "FF+TS", "INT+TS", "CTL+TS"}
    # The stronger head gives smaller sets and lower risk: every interval says so.
    for d in table.differences:
        if d.metric in ("APS size", "THR size", "AURC", "AUGRC", "selective risk"):
            assert d.difference.verdict == "better", d
    text = table.markdown()
    assert "| clean | INT − FF | APS size |" in text and "risk@80%" in text


def test_errors() -> None:
    with pytest.raises(ValueError, match="at least one"):
        conformal_selective_table([])
    with pytest.raises(ValueError, match="missing"):
        conformal_selective_table([_run(0)], target="ENS")
