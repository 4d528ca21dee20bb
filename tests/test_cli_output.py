"""Console output that fits: tables within 100 columns (every value kept), the long-form
metrics.csv (checked against Lightning's own CSVLogger on the same run), and a redirected run
log without carriage returns or Lightning adverts."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from introspect.jobs.compare import compare
from introspect.report.console import WIDTH, console_lines, console_table
from introspect.runs.csvlog import COLUMNS, LongCSVLogger, read_long_csv
from introspect.runs.trainer import is_advert
from tests.test_compare import _config, _write_run

REPO = Path(__file__).resolve().parents[1]


def _markdown_table(columns: int, rows: int) -> str:
    header = ["split", "n", *(f"{m} {h}" for m in ("acc", "ece") for h in range(columns // 2))]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for r in range(rows):
        values = [f"**row{r}**", "360", *(f"{r + 0.01 * c:.2f}" for c in range(len(header) - 2))]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)


def _body(markdown: str) -> list[str]:
    """The cells of every table row after the header and rule rows."""
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    body = [r for r in rows if not set(r) <= set("|-: ") and r not in _headers(rows)]
    return [c.strip().replace("**", "") for r in body for c in r.strip().strip("|").split("|")]


def _headers(rows: list[str]) -> set[str]:
    """Rows directly above a rule row."""
    return {rows[i - 1] for i, r in enumerate(rows) if i and set(r) <= set("|-: ")}


def test_a_wide_table_fits_and_keeps_every_value() -> None:
    markdown = _markdown_table(12, 5)
    assert max(map(len, markdown.splitlines())) > WIDTH
    shown = console_table("title\n" + markdown + "\nnote")
    lines = shown.splitlines()
    assert lines[0] == "title" and lines[-1] == "note"
    assert max(map(len, lines)) <= WIDTH
    assert "|" not in shown
    # Every value of the table's body is a whole token of the console form (labels once per block).
    tokens = Counter(shown.split())
    for value, count in Counter(_body(markdown)).items():
        assert tokens[value] >= count, value


def test_a_narrow_table_is_unchanged() -> None:
    markdown = _markdown_table(4, 3)
    assert max(map(len, markdown.splitlines())) <= WIDTH
    assert console_table(markdown) == markdown


def test_long_lines_wrap() -> None:
    line = "clean: introspective vs feedforward: " + "accuracy +0.00 pp [+0.00, +0.00] " * 4
    wrapped = console_lines(line.strip()).splitlines()
    assert max(map(len, wrapped)) <= WIDTH and len(wrapped) > 1
    assert " ".join(w.strip() for w in wrapped) == " ".join(line.split())


def test_compare_of_several_runs_fits(tmp_path: Path) -> None:
    runs = [
        _write_run(tmp_path, f"{b}-{a}-{s}", _config(s, backbone=b, augment=a), 0.01 * s)
        for b in ("cifar_resnet20", "cifar_resnet56")
        for a in ("augmix", "standard")
        for s in range(2)
    ]
    report = compare(runs, tmp_path / "cmp")
    wide = report["markdown"]
    assert max(map(len, wide.splitlines())) > WIDTH  # the file keeps the wide form
    shown = console_table(wide)
    assert max(map(len, shown.splitlines())) <= WIDTH
    tokens = Counter(shown.split())
    for value, count in Counter(_body(wide)).items():
        if value and " " not in value:
            assert tokens[value] >= count, value
        else:
            assert value in shown, value


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def training_step(self, batch, _):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.layer(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val/acc", (self.layer(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_long_csv_holds_what_lightnings_csv_logger_holds(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 4, generator=g), torch.arange(16) % 2)
    long = LongCSVLogger(tmp_path, name="logs", version="v")
    wide = L.pytorch.loggers.CSVLogger(tmp_path, name="wide", version="v")
    trainer = L.Trainer(
        max_epochs=3,
        logger=[long, wide],
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(_Tiny(), DataLoader(data, 4), DataLoader(data, 8))
    path = tmp_path / "logs" / "v" / "metrics.csv"
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    rows = read_long_csv(path)
    with open(tmp_path / "wide" / "v" / "metrics.csv") as f:
        reference = [
            (int(row["step"]), name, float(value))
            for row in csv.DictReader(f)
            for name, value in row.items()
            if name != "step" and value != ""
        ]
    assert sorted(rows) == sorted(reference)
    assert {"train/loss_step", "train/loss_epoch", "val/acc", "epoch"} <= {r[1] for r in rows}


def test_adverts_are_recognized() -> None:
    assert is_advert("💡 Tip: For seamless cloud logging, try installing [litlogger](...)")
    assert not is_advert("GPU available: False, used: False")


@pytest.mark.slow
def test_a_redirected_run_log_has_no_carriage_returns_or_adverts(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    tiny = [
        "data=synthetic", "data.num_samples=120", "data.image_size=8", "stage1.epochs=1",
        "stage2.head.epochs=1", "stage2.head.hidden=[16]", "eval.corruptions=[contrast]",
        "eval.severities=[5]", f"run.root={tmp_path / 'runs'}", f"stage2.cache_dir={tmp_path}/c",
    ]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    with log.open("wb") as out:
        done = subprocess.run(
            [sys.executable, str(REPO / "train.py"), *tiny],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, timeout=900,
        )  # fmt: skip
    text = log.read_bytes()
    assert done.returncode == 0, text[-3000:]
    assert b"\r" not in text
    assert b"Tip:" not in text and b"litlogger" not in text and b"litmodels" not in text
    lines = text.decode().splitlines()
    table = [ln for ln in lines if ln.startswith(("split", "clean", "contrast/5"))]
    assert table and max(map(len, table)) <= WIDTH
    (run_dir,) = (tmp_path / "runs").iterdir()
    rows = read_long_csv(run_dir / "logs" / "metrics.csv")
    assert any(name == "eval/clean/feedforward/acc" for _, name, _ in rows)
