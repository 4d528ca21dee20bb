"""The Lightning trainer of a run and its console: device, progress lines, library banners."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, TextIO

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.loggers import Logger
from lightning.pytorch.trainer.states import TrainerFn

from introspect.config.schema import TrainerConfig
from introspect.runs.distributed import trainer_strategy

# Where Lightning's banners and tips are logged from (filters apply to a record's own logger).
_LIBRARY_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch",
    "lightning.fabric",
)


def is_advert(message: str) -> bool:
    """Whether a Lightning log message is an advert ("💡 Tip: ... try installing ...")."""
    return message.lstrip("💡 ").startswith("Tip:")


class _OncePerProcess(logging.Filter):
    """Let each distinct informational message through once per process (Lightning prints its
    accelerator banner for every Trainer; a run builds several) and drop its adverts."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        message = record.getMessage()
        if message in self.seen or is_advert(message):
            return False
        self.seen.add(message)
        return True


_ONCE = _OncePerProcess()


def quiet_library_banners() -> None:
    """Show Lightning's banners at most once per process and its adverts never (idempotent)."""
    for name in _LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if _ONCE not in logger.filters:
            logger.addFilter(_ONCE)


class TenthLines:
    """Prints ``label: done/total (x %)`` each time another tenth of ``total`` is done."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None, steps: int = 10):
        self.label, self.total, self.stream = label, total, stream
        self.steps = min(steps, total) if total > 0 else 0
        self.done = 0
        self._marks = 0

    def advance(self, n: int = 1, extra: str = "") -> None:
        """Count ``n`` more units done; print when a new tenth is reached."""
        self.done += n
        if self.steps == 0:
            return
        marks = min(self.done, self.total) * self.steps // self.total
        if marks > self._marks:
            self._marks = marks
            percent = 100 * min(self.done, self.total) // self.total
            print(
                f"{self.label}: {self.done}/{self.total} ({percent} %){extra}",
                file=self.stream or sys.stderr,
                flush=True,
            )


def console_is_terminal(stream: TextIO | None = None) -> bool:
    """Whether progress goes to a terminal (where Lightning's and tqdm's bars are kept)."""
    return (stream or sys.stderr).isatty()


class LineProgress(ProgressBar):
    """Progress for consoles that are not terminals (logs, CI, SLURM): one line per ~10 % of each
    stage (fit: epochs, with the logged metrics; validate, test, predict: batches over every
    loader)."""

    def __init__(self, stream: TextIO | None = None, steps: int = 10) -> None:
        super().__init__()
        self.stream = stream
        self.steps = steps
        self._enabled = True
        self._lines = TenthLines("", 0)

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _start(self, label: str, total: int) -> None:
        self._lines = TenthLines(label, total if self._enabled else 0, self.stream, self.steps)

    def _metrics(self, trainer: L.Trainer) -> str:
        shown = [
            f"{key}={value:.4g}"
            for key, value in trainer.progress_bar_metrics.items()
            if isinstance(value, int | float)
        ]
        return f"  {' '.join(shown)}" if shown else ""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 0
        self._start("fit epochs", epochs)
        self._lines.advance(trainer.current_epoch)  # resumed runs start part-way

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._lines.advance(1, self._metrics(trainer))

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._start("validate batches", _total(trainer.num_val_batches))

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:  # inside fit the epoch line reports
            self._lines.advance()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("test batches", _total(trainer.num_test_batches))

    def on_test_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._lines.advance()

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("predict batches", _total(trainer.num_predict_batches))

    def on_predict_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._lines.advance()


def _total(counts: Any) -> int:
    try:
        return int(sum(int(c) for c in counts if c != float("inf")))
    except TypeError:
        return 0


def progress_callbacks(enabled: bool, stream: TextIO | None = None) -> list[Callback]:
    """Lightning's bar on a terminal, :class:`LineProgress` otherwise; nothing when disabled."""
    if not enabled:
        return []
    out = stream or sys.stderr
    if out.isatty():
        return []  # Lightning adds its TQDM bar
    return [LineProgress(stream)]


def resolve_device(accelerator: str) -> torch.device:
    """The device feature extraction runs on, following ``trainer.accelerator``."""
    acc = accelerator
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def build_trainer(
    t: TrainerConfig,
    run_dir: Path,
    *,
    loggers: list[Logger] | bool = False,
    callbacks: list[Callback] | None = None,
    max_epochs: int | None = None,
    **overrides: Any,
) -> L.Trainer:
    """A ``lightning.Trainer`` from the trainer settings ``t`` writing under ``run_dir``."""
    quiet_library_banners()
    callbacks = list(callbacks or [])
    callbacks += progress_callbacks(
        bool(overrides.get("enable_progress_bar", t.enable_progress_bar))
    )
    kwargs: dict[str, Any] = {
        "accelerator": t.accelerator,
        "devices": t.devices,
        "num_nodes": t.num_nodes,
        "strategy": trainer_strategy(t),
        "precision": t.precision,
        "deterministic": t.deterministic,
        "log_every_n_steps": t.log_every_n_steps,
        "enable_progress_bar": bool(t.enable_progress_bar),
        "gradient_clip_val": t.gradient_clip_val,
        "fast_dev_run": t.fast_dev_run,
        "default_root_dir": str(run_dir),
        "logger": loggers,
        "callbacks": callbacks,
        "enable_model_summary": False,
        "max_epochs": max_epochs,
    }
    for key in ("limit_train_batches", "limit_val_batches"):
        if getattr(t, key) is not None:
            kwargs[key] = getattr(t, key)
    kwargs.update(overrides)
    return L.Trainer(**kwargs)
