"""The explanation tasks of a finished run: faithfulness and VOICE evaluation
(``explain-eval``) and the figures looking inside its network (``explain-network``)."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset, Subset

from introspect.explain.core import ExplanationError
from introspect.explain.faithfulness import evaluate_faithfulness, format_faithfulness
from introspect.explain.figure import voice_figure
from introspect.explain.methods import MAP_METHODS, REFERENCES
from introspect.explain.network import (
    activation_maps,
    activations_figure,
    filters_figure,
    first_layer_filters,
    nearest_neighbours,
    neighbours_figure,
    patches_figure,
    penultimate_features,
    top_activating_patches,
    tsne_embedding,
    tsne_figure,
)
from introspect.explain.uncertainty import VoiceEvaluation, evaluate_voice, voice
from introspect.jobs.quality import QualitySettings
from introspect.runs.integrity import seal
from introspect.sanity import sanity_section


@dataclass
class EvalOptions:
    """What ``explain-eval`` measures (see ``introspect.cli.explain``)."""

    methods: list[str]
    n: int = 64
    split: str = "test"
    cell: str | None = None
    layer: str | None = None
    steps: int = 32
    voice: bool = True
    threshold: float = 0.1
    batch_size: int = 16
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    sanity: bool = True
    sanity_n: int = 8
    sanity_kw: dict[str, Any] = field(default_factory=dict)  # samples, radius, points, seed


def check_method_options(method_options: Mapping[str, Mapping[str, Any]]) -> None:
    """``ExplanationError`` unless every ``method_options[name]`` key is a keyword argument
    of method ``name`` (other than the shared ones, which the evaluation sets)."""
    import inspect

    available = MAP_METHODS | REFERENCES
    shared = {"model", "images", "layer", "target", "normalize"}
    for name, settings in method_options.items():
        if name not in available:
            raise ExplanationError(f"unknown method {name!r}")
        accepted = set(inspect.signature(available[name]).parameters) - shared
        wrong = sorted(set(settings) - accepted)
        if wrong:
            raise ExplanationError(
                f"{name} has no option {', '.join(wrong)}; its options: "
                f"{', '.join(sorted(accepted)) or 'none'}"
            )


def write_record(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically, never replacing an existing file
    (``ExplanationError`` if one appeared meanwhile)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2)
            fh.write("\n")
        try:
            os.link(tmp, path)  # atomic, and fails if path exists
        except FileExistsError:
            raise ExplanationError(
                f"{path} already exists; results are records and are never replaced: pass "
                "tag=<new name>"
            ) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


@dataclass(frozen=True)
class CorruptionSource:
    """How corruption cells of the test split are generated (the run's ``eval`` settings)."""

    seed: int = 0
    chunk_size: int = 256
    cache_dir: str | None = None


@dataclass(frozen=True)
class Network:
    """A finished run's stage-1 network in eval mode on the run's device, the run's
    configuration as plain values naming that network's checkpoint (what records keep) and
    its loggers (built on demand)."""

    backbone: torch.nn.Module
    config: dict[str, Any]
    loggers: Callable[[], list[Any]]


@dataclass(frozen=True)
class ExplainedRun:
    """A finished classification run opened for explanation: its data module, device and the
    ``run``, ``eval``, ``trainer`` and ``logger`` values the explanation jobs read;
    ``network()`` loads its stage-1 network (``PipelineError`` when the run has none)."""

    dm: Any
    device: torch.device
    network: Callable[[], Network]
    name: str
    seed: int
    corruptions: CorruptionSource
    progress: bool
    wandb: bool


def open_run(cfg: DictConfig, run_dir: Path) -> ExplainedRun | QualitySettings:
    """The finished run in ``run_dir`` whose configuration is ``cfg``, opened for the
    explanation jobs; a quality run (``task: quality``) gives its ``QualitySettings``."""
    if cfg.task == "quality":
        return QualitySettings.from_config(cfg)
    from introspect.jobs.job import job_loggers
    from introspect.jobs.settings import train_settings
    from introspect.runs.trainer import resolve_device
    from introspect.stages.stage1 import build_backbone, build_data

    settings = train_settings(cfg)
    device = resolve_device(settings.job.trainer.accelerator)
    dm = build_data(settings.stage1)

    def network() -> Network:
        finished = settings.of_finished_run(run_dir)
        backbone = build_backbone(finished.stage1, dm.num_classes, dm.image_shape)
        return Network(
            backbone.eval().to(device),
            finished.job.config,
            lambda: job_loggers(finished.job, run_dir),
        )

    e = cfg.eval
    return ExplainedRun(
        dm=dm,
        device=device,
        network=network,
        name=settings.job.run.name,
        seed=int(cfg.run.seed),
        corruptions=CorruptionSource(e.seed, e.chunk_size, e.cache_dir),
        progress=bool(cfg.trainer.enable_progress_bar),
        wandb=bool(cfg.logger.wandb),
    )


def eval_dataset(
    dm: Any, split: str, cell: str | None, n: int, corruptions: CorruptionSource
) -> Dataset:
    """The first ``n`` images of ``split``, or of the corruption ``cell`` (``name/severity``)
    generated from the test split as ``corruptions`` says."""
    from introspect.data.shifted import CorruptedDataset, check_cells

    dataset = dm.split(split)
    if cell is not None:
        name, _, severity = cell.partition("/")
        check_cells([name], [int(severity)])
        dataset = CorruptedDataset(
            dm.split("test"),
            name,
            int(severity),
            seed=corruptions.seed,
            chunk_size=corruptions.chunk_size,
            cache_dir=corruptions.cache_dir,
        )
    if len(dataset) == 0:
        raise ExplanationError(f"the {cell or split} split has no images")
    return Subset(dataset, range(min(n, len(dataset))))


def _batches(dm: Any, dataset: Dataset, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images, labels) for images, labels, *_ in dm.loader(dataset, batch_size=batch_size)]


def _voice_examples(evaluation: VoiceEvaluation) -> list[int]:
    """Up to two correct and two incorrect image positions, the first of each."""
    correct = evaluation.correct.nonzero()[:, 0].tolist()[:2]
    wrong = (~evaluation.correct).nonzero()[:, 0].tolist()[:2]
    return correct + wrong


def explain_eval(
    run: ExplainedRun, run_dir: Path, out_dir: Path, options: EvalOptions
) -> dict[str, Any]:
    """Measure every method's deletion and insertion AUC and seconds per image, and the VOICE
    scores of correct and incorrect predictions, on the first ``options.n`` images; write
    ``explain.md``, ``voice.png`` and (last, atomically) ``results.json`` to ``out_dir``."""
    from introspect.runs.provenance import results_header

    started = time.perf_counter()
    device, dm = run.device, run.dm
    dataset = eval_dataset(dm, options.split, options.cell, options.n, run.corruptions)
    network = run.network()
    backbone = network.backbone
    batches = _batches(dm, dataset, options.batch_size)
    where = options.cell or options.split
    available = MAP_METHODS | REFERENCES
    methods = {name: available[name] for name in options.methods}
    show = run.progress
    table: dict[str, dict[str, float]] = {}
    if methods:
        table = evaluate_faithfulness(
            backbone,
            batches,
            methods,
            layer=options.layer,
            options=options.method_options,
            steps=options.steps,
            device=device,
            progress=(lambda text: print(f"faithfulness: {text}", flush=True)) if show else None,
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [
        f"# Explanations of run {run.name}",
        f"{len(dataset)} images of {where}; layer {options.layer or '(each method default)'}; "
        f"{options.steps} deletion/insertion steps (deletion to each image's mean colour, "
        "insertion from the blurred image; probability of the predicted class).",
    ]
    if table:
        parts += ["## Faithfulness", format_faithfulness(table)]
    sanity = None
    if methods and options.sanity:
        images = torch.cat([b[0] for b in batches])[: options.sanity_n].to(device)
        sanity, text = sanity_section(
            backbone, images, methods, options.layer, options.method_options, **options.sanity_kw
        )
        parts += ["## Sanity checks", text]
    voice_section: dict[str, Any] | None = None
    if options.voice:
        voice_section = _voice_section(backbone, batches, dm.class_names, out_dir, options, device)
        parts += ["## VOICE", format_voice(voice_section["summary"], options.threshold)]
    markdown = "\n\n".join(parts) + "\n"
    (out_dir / "explain.md").write_text(markdown)
    print(markdown)
    header = results_header(
        run.name, network.config, device=device, started=started, evaluation_of=str(run_dir)
    )
    results = {
        "run": header,
        "settings": {
            "images": len(dataset),
            "split": options.split if options.cell is None else "test",
            "cell": options.cell,
            "layer": options.layer,
            "steps": options.steps,
            "deletion_baseline": "mean",
            "insertion_baseline": "blur",
            "batch_size": options.batch_size,
            "method_options": options.method_options,
        },
        "faithfulness": table or None,
        "voice": voice_section,
        "sanity": sanity,
    }
    write_record(out_dir / "results.json", seal(results, run_dir))
    return results


def _voice_section(
    backbone: torch.nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    class_names: Sequence[str],
    out_dir: Path,
    options: EvalOptions,
    device: torch.device,
) -> dict[str, Any]:
    """VOICE IoU and SNR of every image (the ``voice`` entry of the results) and
    ``voice.png`` with two correct and two incorrect examples."""
    evaluation = evaluate_voice(
        backbone, batches, options.layer, threshold=options.threshold, device=device
    )
    picks = _voice_examples(evaluation)
    images = torch.cat([b[0] for b in batches])[picks].to(device)
    titles = [
        f"P = {class_names[int(evaluation.predicted[i])]}, "
        f"true {class_names[int(evaluation.labels[i])]}"
        for i in picks
    ]
    result = voice(backbone, images, options.layer, threshold=options.threshold)
    voice_figure(evaluation, out_dir / "voice.png", examples=(images, result), titles=titles)
    return {
        "threshold": options.threshold,
        "layer": options.layer,
        "summary": evaluation.summary(),
        "iou": evaluation.iou.tolist(),
        "snr": evaluation.snr.tolist(),
        "correct": evaluation.correct.tolist(),
    }


def format_voice(summary: Mapping[str, Mapping[str, float | int]], threshold: float) -> str:
    """Markdown of a :meth:`VoiceEvaluation.summary`."""
    lines = [
        f"IoU of the normalized uncertainty and the Grad-CAM above {threshold:g}; SNR = "
        "mean/std of the uncertainty map (higher on both = less trustworthy, per the seeds).",
        "",
        "| predictions | images | mean IoU | mean SNR |",
        "|---|---:|---:|---:|",
    ]
    for group in ("correct", "incorrect", "all"):
        row = summary[group]
        iou, snr = row["mean_iou"], row["mean_snr"]
        cells = [f"{v:.4f}" if not math.isnan(v) else "–" for v in (iou, snr)]
        lines.append(f"| {group} | {row['images']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


@dataclass
class NetworkOptions:
    """What ``explain-network`` draws (see ``introspect.cli.explain``)."""

    n: int = 500
    split: str = "test"
    layer: str | None = None
    channels: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    k: int = 8
    queries: int = 4
    batch_size: int = 128


def explain_network(run: ExplainedRun, out_dir: Path, options: NetworkOptions) -> list[Path]:
    """Draw the run's first-layer filters, the activations of ``options.layer`` for the first
    image, the top patches of ``options.channels``, nearest neighbours of the first
    ``options.queries`` images and a t-SNE of the first ``options.n`` images of the split, into
    ``out_dir``; return the figures' paths."""
    device, dm = run.device, run.dm
    dataset = eval_dataset(dm, options.split, None, options.n, run.corruptions)
    backbone = run.network().backbone
    batches = _batches(dm, dataset, options.batch_size)
    names = dm.class_names
    first = batches[0][0][:1].to(device)
    paths = [filters_figure(first_layer_filters(backbone, first), out_dir / "filters.png")]
    acts = activation_maps(backbone, first, options.layer)
    paths.append(activations_figure(first[0], acts[0], out_dir / "activations.png"))
    found = [
        (c, top_activating_patches(backbone, batches, options.layer, c, options.k, device=device))
        for c in options.channels
    ]
    paths.append(patches_figure(found, out_dir / "patches.png", layer_name=options.layer or ""))
    feats = penultimate_features(backbone, batches, device=device)
    queries = min(options.queries, len(feats.features) - 1)
    if queries < 1:
        raise ExplanationError("nearest neighbours need at least two images; raise n")
    k = min(5, len(feats.features) - 1)
    _, index = nearest_neighbours(feats.features[:queries], feats.features, k, exclude_self=True)
    images = torch.cat([b[0] for b in batches])
    label = feats.labels
    paths.append(
        neighbours_figure(
            images[:queries],
            images[index],
            out_dir / "neighbours.png",
            query_titles=[names[int(label[i])] for i in range(queries)],
            neighbour_titles=[[names[int(label[j])] for j in row] for row in index.tolist()],
        )
    )
    embedding = tsne_embedding(feats.features, seed=run.seed)
    paths.append(tsne_figure(embedding, label, names, out_dir / "tsne.png"))
    return paths
