"""Evaluation splits -> metrics of every head -> ``results.json``, table, plots and logs."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from introspect.data import ImageDataModule
from introspect.data.cells import is_cell
from introspect.data.samplers import ContiguousSampler
from introspect.metrics.reliability import bins_from_sums, reliability_grid
from introspect.models.stage2 import StageTwoClassifier
from introspect.report.console import console_lines, console_table
from introspect.report.differences import (
    PREDICTIONS,
    accuracy_differences,
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
from introspect.runs.rundir import config_digest
from introspect.runs.status import write_json_atomic
from introspect.runs.trainer import TenthLines, build_trainer, console_is_terminal, resolve_device
from introspect.stages.baselines import Baselines
from introspect.stages.evaluation import (
    Evaluator,
    aggregate_by,
    format_table,
    summarize,
    verdict,
)

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


def evaluate_and_report(
    cfg: DictConfig,
    dm: ImageDataModule,
    backbone: torch.nn.Module,
    heads: dict[str, StageTwoClassifier],
    splits: dict[str, Dataset],
    out_dir: Path,
    loggers: list[Logger],
    *,
    started: float | None = None,
    extra_run_info: dict[str, Any] | None = None,
    baselines: Baselines | None = None,
    run_dir: Path | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """Evaluate every head on every split of ``splits`` (see ``runs.splits``); write
    ``predictions.npz`` (per image: label and whether each head was right, see
    ``runs.differences``), ``results.json`` (with the paired bootstrap intervals of the
    accuracy differences; sealed against the checkpoints and heads of ``run_dir``, default
    ``out_dir``, and ``predictions.npz``: see ``runs.integrity``), ``table.md`` and plots to
    ``out_dir``; log everything.
    ``note`` (e.g. that the evaluated run's record was modified) goes under the table.

    Splits are evaluated a group at a time (``split_groups``) and kept in ``out_dir`` until the
    final ``results.json`` is written, so a rerun of an interrupted evaluation skips the splits
    already done. In a multi-process run every process evaluates its contiguous block of each
    split and returns the synchronized results; only rank zero writes and logs. ``baselines``
    adds the tempered twins, MC dropout and the ensemble (see ``runs.baselines``).
    """

    names = list(splits)
    partial = PartialResults(out_dir / PARTIAL_DIR, config_digest(cfg))
    done = broadcast_from_zero(partial.load(names) if is_global_zero() else None)
    assert done is not None
    # Each process evaluates one contiguous block of every split, none padded with repeats.
    # On a terminal Lightning's bar; otherwise a line per tenth of the splits, not per loader.
    bar = bool(cfg.trainer.enable_progress_bar) and console_is_terminal()
    trainer = build_trainer(
        cfg, out_dir, loggers=False, inference_mode=False, use_distributed_sampler=False,
        enable_progress_bar=bar,
    )  # fmt: skip
    rank, world = global_rank(), world_size()
    todo = [n for n in names if n not in done]
    lines = TenthLines("evaluated splits", len(todo) if cfg.trainer.enable_progress_bar else 0)
    for group in split_groups(todo):
        evaluator = Evaluator(
            backbone,
            heads,
            group,
            num_classes=dm.num_classes,
            n_bins=cfg.eval.n_bins,
            **(baselines.evaluator_kwargs() if baselines is not None else {}),
        )
        loaders = [
            dm.loader(
                splits[n],
                batch_size=cfg.eval.batch_size,
                sampler=ContiguousSampler(len(splits[n]), rank, world),  # type: ignore[arg-type]
            )
            for n in group
        ]
        trainer.test(evaluator, dataloaders=loaders, verbose=False)
        # Lightning moved the module to the CPU; synchronize where the process group works.
        evaluator.to(trainer.strategy.root_device)
        group_results, group_bins = evaluator.collect()
        group_images = evaluator.correctness()
        if is_global_zero():
            partial.save(group_results, group_bins, group_images)
        done.update({n: (group_results[n], group_bins[n], group_images[n]) for n in group})
        if is_global_zero():
            lines.advance(len(group))
    split_results = {n: done[n][0] for n in names}
    bins = {n: done[n][1] for n in names}
    per_image = {n: done[n][2] for n in names}

    results: dict[str, Any] = {
        "run": {
            "name": cfg.run.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seed": cfg.run.seed,
            "config": OmegaConf.to_container(cfg, resolve=True),
            "provenance": provenance(resolve_device(cfg), world_size=world),
            **(extra_run_info or {}),
        },
        "splits": split_results,
        "summary": summarize(split_results),
        "by_corruption": aggregate_by(split_results, 0),
        "by_severity": aggregate_by(split_results, 1),
        "differences": accuracy_differences(per_image),
    }
    if baselines is not None:
        results["run"] |= baselines.provenance()
    if cfg.data.get("skip_bad_files"):
        results["run"]["skipped_bad_files"] = len(dm.bad_files)
    if started is not None:
        results["run"]["seconds"] = round(time.perf_counter() - started, 2)
    if not is_global_zero():
        return results

    table = format_table(results) + (f"\n\n{note}" if note else "")
    plots = _reliability_plots(bins, names, out_dir, run_label(cfg, out_dir))
    notes = "\n".join(baselines.notes()) + "\n" if baselines is not None else ""
    (out_dir / "table.md").write_text(table + "\n\n" + verdict(results) + "\n" + notes)
    _log(loggers, results, plots)
    # results.json last and atomically: a failed run leaves none behind. It seals the
    # per-image records written before it.
    write_predictions(out_dir / PREDICTIONS, per_image)
    write_sealed(out_dir / "results.json", results, run_dir or out_dir, beside=[PREDICTIONS])
    partial.clear()
    print(console_table(table))
    print(console_lines(verdict(results)))
    return results


def run_label(cfg: DictConfig, out_dir: Path) -> str:
    """How figures name the run: ``run.name`` or its directory (and the evaluation's tag)."""
    run_dir = Path(cfg.run.dir) if cfg.run.dir else out_dir
    name = cfg.run.name or run_dir.name
    return name if out_dir == run_dir else f"{name} ({out_dir.name})"


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
