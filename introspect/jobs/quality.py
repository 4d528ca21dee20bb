"""The image quality job (``task: quality``): quality set -> quality model (stage 1) ->
introspective and control regressors (stage 2) -> Table-13 style comparison with
full-reference baselines."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from introspect.backbones import load_backbone
from introspect.config import ConfigError
from introspect.gradients.normalize import Standardizer, normalize_features
from introspect.metrics.quality import krcc, outlier_ratio, plcc, rmse, srcc
from introspect.quality import (
    FULL_REFERENCE,
    QualitySet,
    full_reference_scores,
    load_quality_set,
    split_by_reference,
)
from introspect.quality.introspection import (
    RegressorRecipe,
    contrast_levels,
    fit_regressor,
    quality_features,
)
from introspect.quality.model import QualityModel, QualityTraining, train_quality_model
from introspect.runs.integrity import write_sealed
from introspect.runs.rundir import prepare_run_dir
from introspect.runs.status import mark_stage_done, now, update_status

METRICS = ("or", "rmse", "plcc", "srcc", "krcc")
TITLES = {
    "or": "Outlier Ratio (OR, ↓)",
    "rmse": "Root Mean Square Error (RMSE, ↓)",
    "plcc": "Pearson Linear Correlation Coefficient (PLCC, ↑)",
    "srcc": "Spearman's Rank Correlation Coefficient (SRCC, ↑)",
    "krcc": "Kendall's Rank Correlation Coefficient (KRCC, ↑)",
}
HEADS = {"feedforward": "FF", "introspective": "INT", "control": "CTL"}
CHECKPOINT = "checkpoints/quality.pt"


def check_quality_config(cfg: DictConfig) -> None:
    """``ConfigError`` for settings of the quality task that cannot work (before any work)."""
    q = cfg.quality
    if q.database != "proxy" and q.path is None:
        raise ConfigError(
            f"quality.database={q.database} reads a released database: set quality.path to it"
        )
    if q.database == "proxy" and q.label in q.baselines:
        raise ConfigError(
            f"quality.baselines includes {q.label}, the metric that scores the proxy set; "
            "drop it from quality.baselines or pick another quality.label"
        )
    if q.database == "proxy":
        from introspect.data.corruptions import ALL_NAMES

        unknown = [d for d in q.distortions if d not in ALL_NAMES]
        if unknown or not q.distortions or not q.references:
            raise ConfigError(
                f"quality.distortions must be a non-empty list of {', '.join(ALL_NAMES)} and "
                f"quality.references a non-empty list of scikit-image samples; got "
                f"distortions {list(q.distortions)}, references {list(q.references)}"
            )
    if not q.contrasts:
        raise ConfigError("quality.contrasts is empty; give the contrast levels q' (fractions)")
    if cfg.backbone.checkpoint is not None:
        raise ConfigError("the quality task trains its model; set backbone.checkpoint=null")


def build_quality_set(cfg: DictConfig) -> QualitySet:
    """The configured quality set."""
    q = cfg.quality
    return load_quality_set(
        q.database,
        q.path,
        references=list(q.references),
        distortions=list(q.distortions),
        severities=list(q.severities),
        image_size=q.image_size,
        label=q.label,
        cache_dir=q.cache_dir,
        seed=cfg.data.split_seed,
    )


def build_quality_model(cfg: DictConfig) -> QualityModel:
    """A fresh quality model: the backbone ``cfg.backbone`` with a one-score head."""
    b = cfg.backbone
    patch = cfg.quality.train.patch_size
    backbone = load_backbone(
        b.name,
        num_classes=1,
        mean=list(b.mean) if b.mean is not None else None,
        std=list(b.std) if b.std is not None else None,
        head=b.head,
        input_size=(3, patch, patch),
        kwargs=dict(b.kwargs),
    )
    return QualityModel(backbone)


def _recipe(cfg: DictConfig) -> RegressorRecipe:
    h = cfg.stage2.head
    return RegressorRecipe(
        hidden=tuple(h.hidden),
        dropout=h.dropout,
        activation=h.activation,
        epochs=h.epochs,
        batch_size=h.batch_size,
        lr=h.optim.lr,
        weight_decay=h.optim.weight_decay,
    )


def _agreement(
    predicted: np.ndarray, target: np.ndarray, std: np.ndarray | float, cfg: DictConfig
) -> dict[str, float]:
    q = cfg.quality
    return {
        "or": outlier_ratio(predicted, target, std, k=q.outlier_k, mapping=q.mapping),
        "rmse": rmse(predicted, target, mapping=q.mapping),
        "plcc": abs(plcc(predicted, target, mapping=q.mapping)),
        "srcc": abs(srcc(predicted, target)),
        "krcc": abs(krcc(predicted, target)),
    }


def database_title(dataset: QualitySet, label: str) -> str:
    """The row label of a database in the tables (``proxy (MS-SSIM)`` for the proxy set)."""
    if dataset.proxy:
        return f"proxy ({FULL_REFERENCE[label].title})"
    return {"tid2013": "TID13", "kadid10k": "KADID", "livemd": "MULTI"}.get(
        dataset.name, dataset.name
    )


def quality_table(results: dict[str, Any]) -> str:
    """The Table-13 layout: one block per metric, one row per database, the full-reference
    baselines then FF, INT and CTL as columns (mean ± std when ``results`` pools seeds)."""
    baselines = list(results["baselines"])
    heads = list(results["models"])
    columns = [FULL_REFERENCE[b].title for b in baselines] + [HEADS[h] for h in heads]
    lines = [
        f"{results['data']['description']}",
        "",
        "| Database | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    row_name = results["data"]["title"]
    for metric in METRICS:
        lines.append(f"| **{TITLES[metric]}** |" + " |" * len(columns))
        cells = [_cell(results["baselines"][b][metric]) for b in baselines]
        cells += [_cell(results["models"][h][metric]) for h in heads]
        lines.append(f"| {row_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: float | list[float]) -> str:
    if isinstance(value, list):
        mean, std = float(np.mean(value)), float(np.std(value))
        return f"{mean:.3f} ± {std:.3f}"
    return f"{value:.3f}"


def _scatter(
    path: Path, target: np.ndarray, predictions: dict[str, np.ndarray], title: str
) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4 * len(predictions), 4))
    axes = fig.subplots(1, len(predictions), squeeze=False)[0]
    for ax, (name, pred) in zip(axes, predictions.items(), strict=True):
        ax.scatter(pred, target, s=8, alpha=0.6)
        ax.set_xlabel(f"{name} prediction")
        ax.set_ylabel(title)
        ax.set_title(f"{name} on {title}")
    fig.suptitle(f"test split: {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run_quality(cfg: DictConfig) -> dict[str, Any]:
    """Run the quality job end to end and return its results (also ``results.json``,
    ``table.md`` and ``scatter.png`` in the run directory)."""
    start = time.perf_counter()
    check_quality_config(cfg)
    torch.manual_seed(cfg.run.seed)
    np.random.seed(cfg.run.seed)
    q = cfg.quality
    dataset = build_quality_set(cfg)
    splits = split_by_reference(
        dataset.reference_index, q.val_fraction, q.test_fraction, cfg.data.split_seed
    )
    model = build_quality_model(cfg)
    run_dir = prepare_run_dir(cfg)
    timings: dict[str, float] = {"data": time.perf_counter() - start}
    try:
        results = _run(cfg, dataset, splits, model, run_dir, timings)
    except BaseException as err:
        update_status(run_dir, state="failed", error=f"{type(err).__name__}: {err}", failed=now())
        raise
    results["run"]["seconds"] = time.perf_counter() - start
    write_sealed(run_dir / "results.json", results, run_dir)
    (run_dir / "table.md").write_text(quality_table(results))
    mark_stage_done(run_dir, "evaluation")
    update_status(
        run_dir, state="complete", stage=None, finished=now(), seconds=results["run"]["seconds"]
    )
    return results


def _run(
    cfg: DictConfig,
    dataset: QualitySet,
    splits: dict[str, np.ndarray],
    model: QualityModel,
    run_dir: Path,
    timings: dict[str, float],
) -> dict[str, Any]:
    q = cfg.quality
    device = torch.device("cpu")
    clock = time.perf_counter()
    update_status(run_dir, stage="stage1")
    t = q.train
    recipe = QualityTraining(t.epochs, t.batch_size, t.patch_size, t.patches, t.lr, t.weight_decay)
    losses = train_quality_model(
        model, dataset, splits["train"].tolist(), recipe, seed=cfg.run.seed, device=device
    )
    mark_stage_done(run_dir, "stage1")
    timings["stage1"] = time.perf_counter() - clock

    clock = time.perf_counter()
    update_status(run_dir, stage="stage2")
    levels = contrast_levels(q.contrasts, dataset.scores[splits["train"]])
    f = cfg.stage2.features
    feats = {
        name: quality_features(
            model,
            dataset,
            idx.tolist(),
            levels,
            batch_size=q.batch_size,
            include_bias=f.include_bias,
            device=device,
        )
        for name, idx in splits.items()
    }
    fit_on = list(cfg.stage2.splits)
    standardizer = None
    if f.normalize == "standardize":
        standardizer = Standardizer().fit(torch.cat([feats[s].introspective for s in fit_on]))

    def introspective(split: str) -> torch.Tensor:
        return normalize_features(feats[split].introspective, f.normalize, standardizer)

    y_fit = torch.as_tensor(np.concatenate([dataset.scores[splits[s]] for s in fit_on]))
    recipe2 = _recipe(cfg)
    heads = {
        "introspective": fit_regressor(
            torch.cat([introspective(s) for s in fit_on]).double(),
            y_fit,
            recipe2,
            seed=cfg.run.seed,
        )
    }
    if cfg.stage2.control:
        heads["control"] = fit_regressor(
            torch.cat([feats[s].penultimate for s in fit_on]).double(),
            y_fit,
            recipe2,
            seed=cfg.run.seed,
        )
    mark_stage_done(run_dir, "stage2")
    timings["stage2"] = time.perf_counter() - clock
    checkpoint = run_dir / CHECKPOINT
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(), "contrasts": torch.as_tensor(levels)}
    state.update({f"head.{k}": v.state_dict() for k, v in heads.items()})
    torch.save(state, checkpoint)

    clock = time.perf_counter()
    update_status(run_dir, stage="evaluation")
    test = splits["test"]
    target = dataset.scores[test]
    std = dataset.stds[test] if dataset.stds is not None else q.outlier_std
    with torch.no_grad():
        predictions = {
            "feedforward": feats["test"].scores.double().numpy(),
            "introspective": heads["introspective"](introspective("test").double()).numpy(),
        }
        if "control" in heads:
            predictions["control"] = heads["control"](feats["test"].penultimate.double()).numpy()
    models = {name: _agreement(p, target, std, cfg) for name, p in predictions.items()}
    timings["evaluation"] = time.perf_counter() - clock
    baselines = {}
    for name in q.baselines:
        clock = time.perf_counter()
        values = full_reference_scores(dataset, test.tolist(), name)
        baselines[name] = _agreement(values, target, std, cfg)
        timings[f"baseline.{name}"] = time.perf_counter() - clock
    title = database_title(dataset, q.label)
    _scatter(
        run_dir / "scatter.png",
        target,
        {HEADS[k]: v for k, v in predictions.items()},
        f"{title} score" if not dataset.proxy else f"{title} score (proxy: no human opinions)",
    )
    description = (
        f"Proxy set: {dataset.num_references} scikit-image sample images x "
        f"{len(set(dataset.distortions))} corruptions x {len(set(dataset.levels.tolist()))} "
        f"levels ({len(dataset)} images, {q.image_size} px), scored by "
        f"{FULL_REFERENCE[q.label].title} against the reference (proxy: no human opinion scores)"
        if dataset.proxy
        else f"{title}: {len(dataset)} images, {dataset.score_name}"
    )
    return {
        "task": "quality",
        "data": {
            "database": dataset.name,
            "proxy": dataset.proxy,
            "title": title,
            "description": description,
            "score": dataset.score_name,
            "images": {name: int(len(idx)) for name, idx in splits.items()},
            "references": {
                name: int(len(np.unique(dataset.reference_index[idx])))
                for name, idx in splits.items()
            },
            "outlier_std": "per-image opinion-score std"
            if dataset.stds is not None
            else q.outlier_std,
        },
        "contrasts": levels.tolist(),
        "stage1_losses": losses,
        "models": models,
        "baselines": baselines,
        "run": {"name": cfg.run.name, "seed": cfg.run.seed, "timings": timings},
    }


def load_quality_run(
    cfg: DictConfig, run_dir: Path
) -> tuple[QualityModel, QualitySet, dict[str, np.ndarray], np.ndarray]:
    """A finished quality run's model (eval mode), data, splits and contrast levels."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"{path} is missing; was the quality run finished?")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = build_quality_model(cfg)
    model.load_state_dict(state["model"])
    dataset = build_quality_set(cfg)
    q = cfg.quality
    splits = split_by_reference(
        dataset.reference_index, q.val_fraction, q.test_fraction, cfg.data.split_seed
    )
    return model.eval(), dataset, splits, state["contrasts"].numpy()
