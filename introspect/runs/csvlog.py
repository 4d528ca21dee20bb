"""A Lightning logger writing ``metrics.csv`` in long form: one ``step,name,value`` row per
logged value (a run logs over a thousand metric names, each on a few steps; the wide table of
Lightning's ``CSVLogger`` is mostly empty cells)."""

from __future__ import annotations

import csv
from argparse import Namespace
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

COLUMNS = ("step", "name", "value")


class LongCSVLogger(Logger):
    """Writes ``<save_dir>/<name>/<version>/metrics.csv`` (``step,name,value``) and the
    hyperparameters to ``hparams.yaml`` beside it. Like ``CSVLogger``, it replaces the
    ``metrics.csv`` of its folder, so each job logs under its own ``version``."""

    def __init__(self, save_dir: str | Path, name: str = "logs", version: str = "") -> None:
        super().__init__()
        self._save_dir = Path(save_dir)
        self._name = name
        self._version = version
        self._rows: list[tuple[int, str, float]] = []
        self._started = False

    @property
    def name(self) -> str:
        """The folder under ``save_dir``."""
        return self._name

    @property
    def version(self) -> str:
        """The sub-folder of this job ("" for none)."""
        return self._version

    @property
    def save_dir(self) -> str:
        """The folder the logs folder lives in (the run directory)."""
        return str(self._save_dir)

    @property
    def root_dir(self) -> str:
        """``<save_dir>/<name>``."""
        return str(self._save_dir / self._name)

    @property
    def log_dir(self) -> str:
        """Where ``metrics.csv`` is written."""
        folder = self._save_dir / self._name
        return str(folder / self._version if self._version else folder)

    @property
    def metrics_file(self) -> Path:
        """The ``metrics.csv`` of this logger."""
        return Path(self.log_dir) / "metrics.csv"

    @rank_zero_only
    def log_hyperparams(
        self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any
    ) -> None:
        """Write the hyperparameters as ``hparams.yaml``."""
        from lightning.fabric.utilities.logger import _convert_params
        from lightning.pytorch.core.saving import save_hparams_to_yaml

        Path(self.log_dir).mkdir(parents=True, exist_ok=True)
        save_hparams_to_yaml(Path(self.log_dir) / "hparams.yaml", _convert_params(params))

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Buffer one row per metric at ``step`` (written by :meth:`save`)."""
        at = int(step) if step is not None else len(self._rows)
        for key, value in metrics.items():
            number = float(value.item() if hasattr(value, "item") else value)
            self._rows.append((at, str(key), number))

    @rank_zero_only
    def save(self) -> None:
        """Append the buffered rows (the first call starts a fresh file with its header)."""
        super().save()
        if not self._rows and self._started:
            return
        Path(self.log_dir).mkdir(parents=True, exist_ok=True)
        mode = "a" if self._started else "w"
        with self.metrics_file.open(mode, newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            if not self._started:
                writer.writerow(COLUMNS)
            for step, name, value in self._rows:
                writer.writerow((step, name, repr(value)))
        self._started = True
        self._rows = []

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Write what is still buffered."""
        self.save()


def read_long_csv(path: str | Path) -> list[tuple[int, str, float]]:
    """The ``(step, name, value)`` rows of a long-form ``metrics.csv``."""
    with Path(path).open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        if tuple(header) != COLUMNS:
            raise ValueError(f"{path}: not a long-form metrics file (header {header})")
        return [(int(step), name, float(value)) for step, name, value in reader]
