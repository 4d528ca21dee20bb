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
from introspect.data.shifted import corrupted_split, stack_split
from introspect.metrics.reliability import reliability_grid
from introspect.models.stage2 import StageTwoClassifier
from introspect.runs.evaluation import (
    Evaluator,
    aggregate_by,
    format_table,
    summarize,
    verdict,
)
from introspect.runs.rundir import write_json_atomic
from introspect.runs.stage2 import resolve_device


def evaluation_splits(cfg: DictConfig, dm: ImageDataModule) -> dict[str, Dataset]:
    """``clean`` (the test split) and every configured ``<corruption>/<severity>`` cell of it."""
    test = dm.split("test")
    splits: dict[str, Dataset] = {"clean": test} if cfg.eval.clean else {}
    device = resolve_device(cfg)
    if cfg.eval.corruptions:
        images, labels = stack_split(test)  # read once, corrupted cell by cell
    for name in cfg.eval.corruptions:
        for severity in cfg.eval.severities:
            splits[f"{name}/{severity}"] = corrupted_split(
                images, labels, name, int(severity), seed=cfg.eval.seed, device=device
            )
    if not splits:
        raise ValueError("nothing to evaluate: set eval.clean=true or list eval.corruptions")
    return splits


def evaluate_and_report(
    cfg: DictConfig,
    dm: ImageDataModule,
    backbone: torch.nn.Module,
    heads: dict[str, StageTwoClassifier],
    run_dir: Path,
    loggers: list[Logger],
    *,
    started: float | None = None,
) -> dict[str, Any]:
    """Evaluate every head on every split; write ``results.json``, ``table.md`` and plots; log."""
    from introspect.runs.pipeline import build_trainer

    splits = evaluation_splits(cfg, dm)
    names = list(splits)
    evaluator = Evaluator(
        backbone, heads, names, num_classes=dm.num_classes, n_bins=cfg.eval.n_bins,
        keep_probs=names,
    )  # fmt: skip
    trainer = build_trainer(cfg, run_dir, loggers=False, inference_mode=False)
    loaders = [dm.loader(splits[n], batch_size=cfg.eval.batch_size) for n in names]
    trainer.test(evaluator, dataloaders=loaders, verbose=False)

    results: dict[str, Any] = {
        "run": {
            "name": cfg.run.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seed": cfg.run.seed,
            "config": OmegaConf.to_container(cfg, resolve=True),
        },
        "splits": evaluator.results,
        "summary": summarize(evaluator.results),
        "by_corruption": aggregate_by(evaluator.results, 0),
        "by_severity": aggregate_by(evaluator.results, 1),
    }
    if started is not None:
        results["run"]["seconds"] = round(time.perf_counter() - started, 2)

    table = format_table(results)
    plots = _reliability_plots(evaluator, names, cfg.eval.n_bins, run_dir)
    (run_dir / "table.md").write_text(table + "\n\n" + verdict(results) + "\n")
    _log(loggers, results, plots)
    # results.json last and atomically: a failed run leaves none behind.
    write_json_atomic(run_dir / "results.json", results)
    print(table)
    print(verdict(results))
    return results


def _reliability_plots(
    evaluator: Evaluator, names: list[str], n_bins: int, run_dir: Path
) -> list[Path]:
    paths: list[Path] = []
    if "clean" in names:
        path = run_dir / "reliability_clean.png"
        reliability_grid(evaluator.kept_probs("clean"), n_bins=n_bins, path=path)
        paths.append(path)
    shifted = [n for n in names if n != "clean"]
    if shifted:
        pooled: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for n in shifted:
            for head, (p, y) in evaluator.kept_probs(n).items():
                prev = pooled.get(head)
                pooled[head] = (
                    (p, y) if prev is None else (torch.cat([prev[0], p]), torch.cat([prev[1], y]))
                )
        path = run_dir / "reliability_shifted.png"
        reliability_grid(pooled, n_bins=n_bins, path=path)
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
