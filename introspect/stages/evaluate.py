"""Evaluation splits -> metrics of every head -> ``results.json``, table, plots and logs."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import Logger, WandbLogger
from torch.utils.data import Dataset

from introspect.corruptions.cells import is_cell
from introspect.data import ImageDataModule
from introspect.data.samplers import ContiguousSampler
from introspect.metrics.reliability import bins_from_sums, reliability_grid
from introspect.models.stage2 import StageTwoClassifier
from introspect.report.console import console_lines, console_table
from introspect.report.differences import (
    PREDICTIONS,
    head_differences,
    read_predictions,
    write_predictions,
)
from introspect.report.names import WORDS
from introspect.runs.distributed import (
    broadcast_from_zero,
    global_rank,
    is_global_zero,
    world_size,
)
from introspect.runs.integrity import file_sha256, write_sealed
from introspect.runs.provenance import provenance
from introspect.runs.status import write_json_atomic
from introspect.runs.trainer import TenthLines, console_is_terminal
from introspect.stages.baselines import Baselines
from introspect.stages.evaluation import (
    EvaluationResult,
    FittedHeads,
    evaluate,
    format_table,
    verdict,
)
from introspect.stages.options import TrainerFactory

PARTIAL_DIR = ".partial-evaluation"
# A split evaluated: its results entry, reliability bin sums and per-image records.
Done = tuple[dict[str, Any], dict[str, Any], dict[str, Any]]


class PartialResults:
    """Results of the splits evaluated so far, one JSON file (and one ``.npz`` of its per-image
    records) per split under ``<out>/.partial-evaluation/``, so an interrupted evaluation
    continues where it stopped. A file made by another evaluation (other ``digest``) is
    ignored."""

    def __init__(self, folder: Path, digest: str) -> None:
        self.folder = folder
        self.digest = digest

    def _file(self, split: str) -> Path:
        return self.folder / (split.replace("/", "__") + ".json")

    def load(self, names: list[str]) -> dict[str, Done]:
        """``{split: (entry, bins, per_image)}`` of the splits among ``names`` already
        evaluated."""
        done: dict[str, Done] = {}
        for name in names:
            images = self._file(name).with_suffix(".npz")
            try:
                saved = json.loads(self._file(name).read_text())
                if not isinstance(saved, dict) or saved.get("digest") != self.digest:
                    continue
                # The per-image file this JSON was saved with (not one a later run replaced).
                if saved.get("split") != name or saved.get("images") != file_sha256(images):
                    continue
                per_image = read_predictions(images)[name]
            except (OSError, ValueError, KeyError):
                continue
            bins = {
                head: {k: torch.tensor(v, dtype=torch.float64) for k, v in sums.items()}
                for head, sums in saved["bins"].items()
            }
            done[name] = (saved["entry"], bins, per_image)
        return done

    def save(
        self, results: dict[str, Any], bins: dict[str, Any], per_image: dict[str, Any]
    ) -> None:
        """Store the results, reliability bin sums and per-image records of freshly evaluated
        splits."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, entry in results.items():
            # The JSON file last: a split counts as done once it is there.
            images = self._file(name).with_suffix(".npz")
            write_predictions(images, {name: per_image[name]})
            plain = {
                head: {k: v.double().tolist() for k, v in sums.items()}
                for head, sums in bins[name].items()
            }
            saved = {"digest": self.digest, "split": name, "entry": entry, "bins": plain}
            write_json_atomic(self._file(name), saved | {"images": file_sha256(images)})

    def clear(self) -> None:
        """Remove the partial results (once the final results file is written)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def split_groups(names: list[str]) -> list[list[str]]:
    """Evaluation units of work: each corruption's cells together, every other split alone."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name.split("/")[0] if is_cell(name) else f"split:{name}", []).append(name)
    return list(groups.values())


@dataclass(frozen=True)
class ReportOptions:
    """What an evaluation records and how it runs, besides the models and splits: the run's
    name, configured directory (``None``: the output directory), seed and resolved
    configuration (recorded in ``results.json``), the configuration's digest (which partial
    results belong to it), the evaluation device, batch size and ECE bins, whether progress is
    shown and whether bad files were skipped (their count is recorded)."""

    config: Mapping[str, Any]
    digest: str
    run_name: str | None = None
    run_dir: str | None = None
    seed: int = 0
    device: str = "cpu"
    batch_size: int = 256
    n_bins: int = 15
    progress: bool = False
    skip_bad_files: bool = False

    def label(self, out_dir: Path) -> str:
        """How figures name the run: its name or directory (and the evaluation's tag)."""
        run_dir = Path(self.run_dir) if self.run_dir else out_dir
        name = self.run_name or run_dir.name
        return name if out_dir == run_dir else f"{name} ({out_dir.name})"


def _evaluate_groups(
    options: ReportOptions, dm: ImageDataModule, fitted: FittedHeads,
    splits: Mapping[str, Dataset], out_dir: Path, trainer: TrainerFactory,
    baselines: Baselines | None,
) -> dict[str, Done]:  # fmt: skip
    """``{split: (entry, bins, per_image)}`` of every split: saved partial results where there
    are some, else ``evaluation.evaluate`` a group at a time (each process its contiguous
    block of every split), saved as each group is done."""
    names = list(splits)
    partial = PartialResults(out_dir / PARTIAL_DIR, options.digest)
    done = broadcast_from_zero(partial.load(names) if is_global_zero() else None)
    assert done is not None
    # On a terminal Lightning's bar; otherwise a line per tenth of the splits, not per loader.
    bar = options.progress and console_is_terminal()
    runner = trainer(inference_mode=False, use_distributed_sampler=False, enable_progress_bar=bar)
    rank, world = global_rank(), world_size()
    todo = [n for n in names if n not in done]
    lines = TenthLines("evaluated splits", len(todo) if options.progress else 0)
    extra = baselines.evaluator_kwargs() if baselines is not None else {}
    extra.pop("temperatures", None)  # carried by ``fitted``
    for group in split_groups(todo):
        loaders = {
            n: dm.loader(
                splits[n],
                batch_size=options.batch_size,
                sampler=ContiguousSampler(len(splits[n]), rank, world),  # type: ignore[arg-type]
            )
            for n in group
        }
        result = evaluate(
            fitted, loaders, num_classes=dm.num_classes, n_bins=options.n_bins, trainer=runner,
            **extra,
        )  # fmt: skip
        if is_global_zero():
            partial.save(result.splits, result.bins, result.per_image)
            lines.advance(len(group))
        done.update({n: (result.splits[n], result.bins[n], result.per_image[n]) for n in group})
    return done


def evaluate_and_report(
    options: ReportOptions,
    dm: ImageDataModule,
    backbone: torch.nn.Module,
    heads: dict[str, StageTwoClassifier],
    splits: dict[str, Dataset],
    out_dir: Path,
    loggers: list[Logger],
    trainer: TrainerFactory,
    *,
    started: float | None = None,
    extra_run_info: dict[str, Any] | None = None,
    baselines: Baselines | None = None,
    run_dir: Path | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """Evaluate every head on every split of ``splits`` (see ``stages.splits``) with
    ``evaluation.evaluate`` (``trainer`` builds the test trainer from keyword overrides); write
    ``predictions.npz`` (per image: label and whether each head was right, see
    ``report.differences``), ``results.json`` (with the paired bootstrap intervals of the
    accuracy differences; sealed against the checkpoints and heads of ``run_dir``, default
    ``out_dir``, and ``predictions.npz``: see ``runs.integrity``), ``table.md`` and plots to
    ``out_dir``; log everything.
    ``note`` (e.g. that the evaluated run's record was modified) goes under the table.

    Splits are evaluated a group at a time (``split_groups``) and kept in ``out_dir`` until the
    final ``results.json`` is written, so a rerun of an interrupted evaluation skips the splits
    already done. In a multi-process run every process evaluates its contiguous block of each
    split and returns the synchronized results; only rank zero writes and logs. ``baselines``
    adds the tempered twins, MC dropout and the ensemble (see ``stages.baselines``).
    """
    temperatures = baselines.temperatures if baselines is not None else {}
    fitted = FittedHeads(backbone, heads, dict(temperatures))
    done = _evaluate_groups(options, dm, fitted, splits, out_dir, trainer, baselines)
    names = list(splits)
    split_results = {n: done[n][0] for n in names}
    per_image = {n: done[n][2] for n in names}
    results: dict[str, Any] = {
        "run": {
            "name": options.run_name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seed": options.seed,
            "config": dict(options.config),
            "provenance": provenance(torch.device(options.device), world_size=world_size()),
            **(extra_run_info or {}),
        },
        **EvaluationResult(split_results).as_dict(),
        "differences": head_differences(per_image),
    }
    if baselines is not None:
        results["run"] |= baselines.provenance()
    if options.skip_bad_files:
        results["run"]["skipped_bad_files"] = len(dm.bad_files)
    if started is not None:
        results["run"]["seconds"] = round(time.perf_counter() - started, 2)
    if is_global_zero():
        bins = {n: done[n][1] for n in names}
        _write_report(results, bins, per_image, out_dir, options.label(out_dir), loggers,
                      baselines=baselines, run_dir=run_dir, note=note)  # fmt: skip
    return results


def _write_report(
    results: dict[str, Any], bins: dict[str, Any], per_image: dict[str, Any], out_dir: Path,
    label: str, loggers: list[Logger], *, baselines: Baselines | None, run_dir: Path | None,
    note: str | None,
) -> None:  # fmt: skip
    """``table.md``, plots, logs, ``predictions.npz`` and, last, the sealed ``results.json``;
    print the table and the verdict."""
    names = list(results["splits"])
    table = format_table(results) + (f"\n\n{note}" if note else "")
    plots = _reliability_plots(bins, names, out_dir, label)
    notes = "\n".join(baselines.notes()) + "\n" if baselines is not None else ""
    (out_dir / "table.md").write_text(table + "\n\n" + verdict(results) + "\n" + notes)
    _log(loggers, results, plots)
    # results.json last and atomically: a failed run leaves none behind. It seals the
    # per-image records written before it.
    write_predictions(out_dir / PREDICTIONS, per_image)
    write_sealed(out_dir / "results.json", results, run_dir or out_dir, beside=[PREDICTIONS])
    PartialResults(out_dir / PARTIAL_DIR, "").clear()
    print(console_table(table))
    print(console_lines(verdict(results)))


def _reliability_plots(
    bins: dict[str, dict[str, Any]], names: list[str], run_dir: Path, label: str
) -> list[Path]:
    """Reliability grids of the clean split and of all corruption cells pooled."""
    paths: list[Path] = []
    if "clean" in names:
        path = run_dir / "reliability_clean.png"
        reliability_grid(
            {WORDS.get(h, h): bins_from_sums(**b) for h, b in bins["clean"].items()},
            title=f"run {label}: clean test split",
            path=path,
        )
        paths.append(path)
    shifted = [n for n in names if is_cell(n)]
    if shifted:
        heads = bins[shifted[0]]
        pooled = {
            WORDS.get(h, h): bins_from_sums(
                **{k: sum(bins[n][h][k] for n in shifted) for k in heads[h]}  # type: ignore[misc]
            )
            for h in heads
        }
        path = run_dir / "reliability_corrupted.png"
        title = f"run {label}: {len(shifted)} corruption cells pooled"
        reliability_grid(pooled, title=title, path=path)
        paths.append(path)
    return paths


def _flatten(results: dict[str, Any]) -> dict[str, float]:
    flat: dict[str, float] = {}
    for split, entry in results["splits"].items():
        for head, metrics in entry.items():
            if isinstance(metrics, dict):
                flat |= {f"eval/{split}/{head}/{m}": v for m, v in metrics.items()}
    for head, metrics in (results.get("summary") or {}).items():
        flat |= {f"eval/summary/{head}/{m}": v for m, v in metrics.items()}
    for key in ("by_corruption", "by_severity"):
        for group, heads in (results.get(key) or {}).items():
            for head, metrics in heads.items():
                flat |= {f"eval/{key}/{group}/{head}/{m}": v for m, v in metrics.items()}
    return flat


def _table_rows(results: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows (split, n, then every head's metrics) of the per-split results."""
    splits = results["splits"]
    first = next(iter(splits.values()))
    pairs = [(h, m) for h, ms in first.items() if isinstance(ms, dict) for m in ms]
    columns = ["split", "num_samples", *(f"{h}/{m}" for h, m in pairs)]
    data = [[name, e["num_samples"], *(e[h][m] for h, m in pairs)] for name, e in splits.items()]
    return columns, data


def _log(loggers: list[Logger], results: dict[str, Any], plots: list[Path]) -> None:
    flat = _flatten(results)
    for logger in loggers:
        logger.log_metrics(flat)
        if isinstance(logger, WandbLogger):
            columns, data = _table_rows(results)
            logger.log_table(key="eval/table", columns=columns, data=data)
            logger.log_image(key="eval/reliability", images=[str(p) for p in plots])
        logger.save()
