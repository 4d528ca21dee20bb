"""The image quality job (``task: quality``): quality set -> quality model (stage 1) ->
introspective and control regressors (stage 2) -> Table-13 style comparison with
full-reference baselines."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from introspect.backbones import load_backbone
from introspect.config import ConfigError
from introspect.config.schema import BackboneConfig, QualityConfig
from introspect.gradients.normalize import Standardizer, normalize_features
from introspect.jobs.job import JobSettings, run_job
from introspect.jobs.settings import train_settings
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
from introspect.runs.provenance import results_header
from introspect.stages.options import FeatureOptions

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


@dataclass(frozen=True)
class QualitySettings:
    """What the quality job reads from a validated configuration: the ``quality`` and
    ``backbone`` sections, the introspective features, the regressors' recipe
    (``stage2.head``), the splits they are fitted on, and the seeds."""

    job: JobSettings
    quality: QualityConfig
    backbone: BackboneConfig
    features: FeatureOptions
    regressor: RegressorRecipe
    fit_splits: tuple[str, ...]
    control: bool
    seed: int
    split_seed: int

    @classmethod
    def from_config(cls, cfg: DictConfig) -> QualitySettings:
        """The settings of ``cfg`` (a validated configuration)."""
        h = cfg.stage2.head
        t = train_settings(cfg)
        return cls(
            job=t.job,
            quality=OmegaConf.to_object(cfg.quality),  # type: ignore[arg-type]
            backbone=OmegaConf.to_object(cfg.backbone),  # type: ignore[arg-type]
            features=t.stage2.features,
            regressor=RegressorRecipe(
                tuple(h.hidden),
                h.dropout,
                h.activation,
                h.epochs,
                h.batch_size,
                h.optim.lr,
                h.optim.weight_decay,
            ),
            fit_splits=tuple(cfg.stage2.splits),
            control=bool(cfg.stage2.control),
            seed=cfg.run.seed,
            split_seed=cfg.data.split_seed,
        )


def check_quality_settings(settings: QualitySettings) -> None:
    """``ConfigError`` for settings of the quality task that cannot work (before any work)."""
    q = settings.quality
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
        from introspect.corruptions.transforms import ALL_NAMES

        unknown = [d for d in q.distortions if d not in ALL_NAMES]
        if unknown or not q.distortions or not q.references:
            raise ConfigError(
                f"quality.distortions must be a non-empty list of {', '.join(ALL_NAMES)} and "
                f"quality.references a non-empty list of scikit-image samples; got "
                f"distortions {list(q.distortions)}, references {list(q.references)}"
            )
    if not q.contrasts:
        raise ConfigError("quality.contrasts is empty; give the contrast levels q' (fractions)")
    if settings.backbone.checkpoint is not None:
        raise ConfigError("the quality task trains its model; set backbone.checkpoint=null")


def build_quality_set(settings: QualitySettings) -> QualitySet:
    """The configured quality set."""
    q = settings.quality
    return load_quality_set(
        q.database,
        q.path,
        references=list(q.references),
        distortions=list(q.distortions),
        severities=list(q.severities),
        image_size=q.image_size,
        label=q.label,
        cache_dir=q.cache_dir,
        seed=settings.split_seed,
    )


def quality_splits(settings: QualitySettings, dataset: QualitySet) -> dict[str, np.ndarray]:
    """The train, val and test image indices of ``dataset``, split by reference content."""
    q = settings.quality
    return split_by_reference(
        dataset.reference_index, q.val_fraction, q.test_fraction, settings.split_seed
    )


def build_quality_model(settings: QualitySettings) -> QualityModel:
    """A fresh quality model: the backbone ``settings.backbone`` with a one-score head."""
    b = settings.backbone
    patch = settings.quality.train.patch_size
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


def _agreement(
    predicted: np.ndarray,
    target: np.ndarray,
    std: np.ndarray | float,
    *,
    outlier_k: float,
    mapping: str,
) -> dict[str, float]:
    """OR, RMSE, PLCC, SRCC and KRCC of ``predicted`` against ``target`` (``quality.mapping``
    fitted before OR, RMSE and PLCC; outliers beyond ``outlier_k`` x ``std``)."""
    return {
        "or": outlier_ratio(predicted, target, std, k=outlier_k, mapping=mapping),
        "rmse": rmse(predicted, target, mapping=mapping),
        "plcc": abs(plcc(predicted, target, mapping=mapping)),
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


def run_quality(settings: QualitySettings) -> dict[str, Any]:
    """Run the quality job of ``settings`` (``QualitySettings.from_config``) end to end and
    return its results (also ``results.json``, ``table.md`` and ``scatter.png`` in the run
    directory)."""
    start = time.perf_counter()
    check_quality_settings(settings)
    torch.manual_seed(settings.seed)
    np.random.seed(settings.seed)
    dataset = build_quality_set(settings)
    splits = quality_splits(settings, dataset)
    model = build_quality_model(settings)
    with run_job(settings.job, started=start, loggers=False) as job:
        timings: dict[str, float] = {"data": time.perf_counter() - start}
        with job.stage("stage1"):
            t = settings.quality.train
            recipe = QualityTraining(
                t.epochs, t.batch_size, t.patch_size, t.patches, t.lr, t.weight_decay
            )
            losses = train_quality_model(
                model, dataset, splits["train"].tolist(), recipe, seed=settings.seed, device=CPU
            )
        timings["stage1"] = job.stage_seconds["stage1"]
        with job.stage("stage2"):
            fitted = _fit_heads(settings, model, dataset, splits)
            _save_checkpoint(job.run_dir / CHECKPOINT, model, fitted)
        timings["stage2"] = job.stage_seconds["stage2"]
        with job.stage("evaluation"):
            results = _evaluate(settings.quality, dataset, splits, fitted, job.run_dir, timings)
            results["stage1_losses"] = losses
            results["run"] = results_header(
                job.settings.run.name,  # type: ignore[union-attr]
                job.settings.config,  # type: ignore[union-attr]
                seed=settings.seed,
                started=start,
                timings=timings,
            )
            write_sealed(job.run_dir / "results.json", results, job.run_dir)
            (job.run_dir / "table.md").write_text(quality_table(results))
    return results


CPU = torch.device("cpu")


@dataclass
class FittedHeads:
    """Stage 2 of a quality run: the contrast levels, every split's features, the regressors
    and how the introspective features are normalized."""

    levels: np.ndarray
    features: dict[str, Any]
    heads: dict[str, torch.nn.Module]
    normalize: str
    standardizer: Standardizer | None

    def introspective(self, split: str) -> torch.Tensor:
        """The normalized introspective features of ``split``."""
        raw = self.features[split].introspective
        return normalize_features(raw, self.normalize, self.standardizer)


def _fit_heads(
    settings: QualitySettings,
    model: QualityModel,
    dataset: QualitySet,
    splits: dict[str, np.ndarray],
) -> FittedHeads:
    """Features of every split, then the introspective (and control) regressors fitted on
    ``settings.fit_splits``."""
    q, f = settings.quality, settings.features
    levels = contrast_levels(q.contrasts, dataset.scores[splits["train"]])
    feats = {
        name: quality_features(
            model,
            dataset,
            idx.tolist(),
            levels,
            batch_size=q.batch_size,
            include_bias=f.include_bias,
            device=CPU,
        )
        for name, idx in splits.items()
    }
    fit_on = list(settings.fit_splits)
    standardizer = None
    if f.normalize == "standardize":
        standardizer = Standardizer().fit(torch.cat([feats[s].introspective for s in fit_on]))
    fitted = FittedHeads(levels, feats, {}, f.normalize, standardizer)
    y_fit = torch.as_tensor(np.concatenate([dataset.scores[splits[s]] for s in fit_on]))
    recipe = settings.regressor
    x_int = torch.cat([fitted.introspective(s) for s in fit_on]).double()
    fitted.heads["introspective"] = fit_regressor(x_int, y_fit, recipe, seed=settings.seed)
    if settings.control:
        x_ctl = torch.cat([feats[s].penultimate for s in fit_on]).double()
        fitted.heads["control"] = fit_regressor(x_ctl, y_fit, recipe, seed=settings.seed)
    return fitted


def _save_checkpoint(path: Path, model: QualityModel, fitted: FittedHeads) -> None:
    """The quality model, the contrast levels and the regressors' weights at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(), "contrasts": torch.as_tensor(fitted.levels)}
    state.update({f"head.{k}": v.state_dict() for k, v in fitted.heads.items()})
    torch.save(state, path)


def _evaluate(
    q: QualityConfig,
    dataset: QualitySet,
    splits: dict[str, np.ndarray],
    fitted: FittedHeads,
    run_dir: Path,
    timings: dict[str, float],
) -> dict[str, Any]:
    """Agreement of FF, INT and CTL and of the full-reference baselines with the test split's
    scores, and the scatter plot; per-baseline seconds go to ``timings``."""
    clock = time.perf_counter()
    test = splits["test"]
    target = dataset.scores[test]
    std = dataset.stds[test] if dataset.stds is not None else q.outlier_std
    heads, test_feats = fitted.heads, fitted.features["test"]
    agree = {"outlier_k": q.outlier_k, "mapping": q.mapping}
    with torch.no_grad():
        predictions = {
            "feedforward": test_feats.scores.double().numpy(),
            "introspective": heads["introspective"](fitted.introspective("test").double()).numpy(),
        }
        if "control" in heads:
            predictions["control"] = heads["control"](test_feats.penultimate.double()).numpy()
    models = {name: _agreement(p, target, std, **agree) for name, p in predictions.items()}
    timings["evaluation"] = time.perf_counter() - clock
    baselines = {}
    for name in q.baselines:
        clock = time.perf_counter()
        values = full_reference_scores(dataset, test.tolist(), name)
        baselines[name] = _agreement(values, target, std, **agree)
        timings[f"baseline.{name}"] = time.perf_counter() - clock
    title = database_title(dataset, q.label)
    _scatter(
        run_dir / "scatter.png",
        target,
        {HEADS[k]: v for k, v in predictions.items()},
        f"{title} score" if not dataset.proxy else f"{title} score (proxy: no human opinions)",
    )
    return {
        "task": "quality",
        "data": _data_summary(dataset, splits, title, q.image_size, q.label, q.outlier_std),
        "contrasts": fitted.levels.tolist(),
        "models": models,
        "baselines": baselines,
    }


def _data_summary(
    dataset: QualitySet,
    splits: dict[str, np.ndarray],
    title: str,
    image_size: int,
    label: str,
    outlier_std: float,
) -> dict[str, Any]:
    """The ``data`` entry of a quality run's results: database, description, split sizes."""
    description = (
        f"Proxy set: {dataset.num_references} scikit-image sample images x "
        f"{len(set(dataset.distortions))} corruptions x {len(set(dataset.levels.tolist()))} "
        f"levels ({len(dataset)} images, {image_size} px), scored by "
        f"{FULL_REFERENCE[label].title} against the reference (proxy: no human opinion scores)"
        if dataset.proxy
        else f"{title}: {len(dataset)} images, {dataset.score_name}"
    )
    return {
        "database": dataset.name,
        "proxy": dataset.proxy,
        "title": title,
        "description": description,
        "score": dataset.score_name,
        "images": {name: int(len(idx)) for name, idx in splits.items()},
        "references": {
            name: int(len(np.unique(dataset.reference_index[idx]))) for name, idx in splits.items()
        },
        "outlier_std": "per-image opinion-score std" if dataset.stds is not None else outlier_std,
    }


def load_quality_run(
    settings: QualitySettings, run_dir: Path
) -> tuple[QualityModel, QualitySet, dict[str, np.ndarray], np.ndarray]:
    """A finished quality run's model (eval mode), data, splits and contrast levels."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"{path} is missing; was the quality run finished?")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = build_quality_model(settings)
    model.load_state_dict(state["model"])
    dataset = build_quality_set(settings)
    splits = quality_splits(settings, dataset)
    return model.eval(), dataset, splits, state["contrasts"].numpy()
