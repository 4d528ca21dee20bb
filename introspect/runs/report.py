"""Evaluation splits -> metrics of every head -> ``results.json``, table, plots and logs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from introspect.data import ImageDataModule
from introspect.data.samplers import ContiguousSampler
from introspect.data.shifted import is_cell
from introspect.metrics.reliability import bins_from_sums, reliability_grid
from introspect.models.stage2 import StageTwoClassifier
from introspect.runs.baselines import Baselines
from introspect.runs.distributed import global_rank, is_global_zero, world_size
from introspect.runs.evaluation import (
    Evaluator,
    aggregate_by,
    format_table,
    summarize,
    verdict,
)
from introspect.runs.rundir import write_json_atomic


def evaluate_and_report(
    cfg: DictConfig,
    dm: ImageDataModule,
    backbone: torch.nn.Module,
    heads: dict[str, StageTwoClassifier],
    splits: dict[str, Dataset],
    run_dir: Path,
    loggers: list[Logger],
    *,
    started: float | None = None,
    baselines: Baselines | None = None,
) -> dict[str, Any]:
    """Evaluate every head on every split of ``splits`` (see ``runs.splits``); write
    ``results.json``, ``table.md`` and plots; log everything.

    In a multi-process run every process evaluates its contiguous block of each split and
    returns the synchronized results; only rank zero writes and logs. ``baselines`` adds the
    tempered twins, MC dropout and the ensemble (see ``runs.baselines``).
    """
    from introspect.runs.pipeline import build_trainer

    names = list(splits)
    evaluator = Evaluator(
        backbone,
        heads,
        names,
        num_classes=dm.num_classes,
        n_bins=cfg.eval.n_bins,
        **(baselines.evaluator_kwargs() if baselines is not None else {}),
    )
    # Each process evaluates one contiguous block of every split, none padded with repeats.
    trainer = build_trainer(
        cfg, run_dir, loggers=False, inference_mode=False, use_distributed_sampler=False
    )
    rank, world = global_rank(), world_size()
    loaders = [
        dm.loader(
            splits[n],
            batch_size=cfg.eval.batch_size,
            sampler=ContiguousSampler(len(splits[n]), rank, world),  # type: ignore[arg-type]
        )
        for n in names
    ]
    trainer.test(evaluator, dataloaders=loaders, verbose=False)
    # Lightning moved the module to the CPU; synchronize where the process group works.
    split_results, bins = evaluator.to(trainer.strategy.root_device).collect()

    results: dict[str, Any] = {
        "run": {
            "name": cfg.run.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seed": cfg.run.seed,
            "config": OmegaConf.to_container(cfg, resolve=True),
        },
        "splits": split_results,
        "summary": summarize(split_results),
        "by_corruption": aggregate_by(split_results, 0),
        "by_severity": aggregate_by(split_results, 1),
    }
    if baselines is not None:
        results["run"] |= baselines.provenance()
    if started is not None:
        results["run"]["seconds"] = round(time.perf_counter() - started, 2)
    if not is_global_zero():
        return results

    table = format_table(results)
    plots = _reliability_plots(bins, names, run_dir)
    notes = "\n".join(baselines.notes()) + "\n" if baselines is not None else ""
    (run_dir / "table.md").write_text(table + "\n\n" + verdict(results) + "\n" + notes)
    _log(loggers, results, plots)
    # results.json last and atomically: a failed run leaves none behind.
    write_json_atomic(run_dir / "results.json", results)
    print(table)
    print(verdict(results))
    return results


def _reliability_plots(
    bins: dict[str, dict[str, Any]], names: list[str], run_dir: Path
) -> list[Path]:
    """Reliability grids of the clean split and of all corruption cells pooled."""
    paths: list[Path] = []
    if "clean" in names:
        path = run_dir / "reliability_clean.png"
        reliability_grid({h: bins_from_sums(**b) for h, b in bins["clean"].items()}, path=path)
        paths.append(path)
    shifted = [n for n in names if is_cell(n)]
    if shifted:
        heads = bins[shifted[0]]
        pooled = {
            h: bins_from_sums(
                **{k: sum(bins[n][h][k] for n in shifted) for k in heads[h]}  # type: ignore[misc]
            )
            for h in heads
        }
        path = run_dir / "reliability_corrupted.png"
        reliability_grid(pooled, path=path)
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
