"""``explain``: the explanation figure of a finished run, from the command line."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from introspect.config import ConfigError, load_run_config
from introspect.explain.errors import ExplanationError

USAGE = """\
usage: explain run=runs/<name> [n=8] [split=test] [out=PATH] [layer=PATH] [kind=cams|prototypes]
               [k=3] [a.b=value ...]

Explains the finished run's stage-1 backbone on the first n images of split (train, val or
test): one row per image with Grad-CAM "why P?", Contrast-CAM "why P, rather than Q?" for
the two next most likely classes and Counterfactual-CAM "why not P?". Writes
<run>/explanations.png (or out=PATH), prints its path and logs it to W&B when
logger.wandb=true. layer= is the explained layer's dotted path (default: the last executed
Conv2d); other a.b=value arguments override the run's saved config.

kind=prototypes (protopnet runs): "this looks like that" - for each image the k prototypes
giving the predicted class the most points, with their source training patches, the
activation map, similarity x class weight = points and the per-class totals; written to
<run>/prototypes.png (or out=PATH).
"""

OPTIONS = ("run", "n", "split", "out", "layer", "kind", "k")
KINDS = ("cams", "prototypes")
# The datamodule's splits (``introspect.data.module.SPLITS``; not imported: it needs torch).
SPLITS = ("train", "val", "test")


def _parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """The ``OPTIONS`` given (each at most once; ``run`` required) and the config overrides."""
    options: dict[str, str] = {}
    overrides: list[str] = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if key not in OPTIONS or not eq:
            overrides.append(arg)
        elif key in options:
            raise ExplanationError(f"{key}= is given twice")
        else:
            options[key] = value
    if not options.get("run"):
        raise ExplanationError("give the run to explain as run=runs/<name>")
    return options, overrides


def _count(text: str, name: str = "n") -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ExplanationError(f"{name} must be a positive integer, got {text!r}")
    return n


def _load(
    options: dict[str, str], overrides: list[str], *, trust_run: bool
) -> tuple[Path, DictConfig]:
    """The run directory and its saved config with ``overrides`` (checked before torch)."""
    _count(options.get("n", "8"))
    _count(options.get("k", "3"), "k")
    if options.get("kind", "cams") not in KINDS:
        raise ExplanationError(f"kind must be one of {', '.join(KINDS)}, got {options['kind']!r}")
    split = options.get("split", "test")
    if split not in SPLITS:
        raise ExplanationError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    run_dir = Path(options["run"]).expanduser().resolve()
    if not run_dir.is_dir():
        raise ExplanationError(f"run directory {run_dir} does not exist")
    return run_dir, load_run_config(run_dir, overrides, trust_run=trust_run)


def _explain(options: dict[str, str], run_dir: Path, cfg: DictConfig) -> Path:
    """Load the run's backbone, draw the figure, log it; return the figure's path."""
    import torch

    from introspect.explain.figure import explanation_figure
    from introspect.runs.pipeline import (
        PipelineError,
        build_backbone,
        build_data,
        quiet_library_warnings,
        stage1_checkpoint,
    )

    n = _count(options.get("n", "8"))
    split = options.get("split", "test")
    quiet_library_warnings()
    dm = build_data(cfg)
    checkpoint = stage1_checkpoint(cfg, run_dir)
    if checkpoint is None:
        raise PipelineError(f"{run_dir} holds no stage-1 checkpoint; was the run finished?")
    cfg.backbone.checkpoint = checkpoint
    backbone = build_backbone(cfg, dm.num_classes, dm.image_shape).eval()
    dataset = dm.split(split)
    samples = [dataset[i] for i in range(min(n, len(dataset)))]
    if not samples:
        raise ExplanationError(f"the {split} split has no images")
    images = torch.stack([image for image, _ in samples])
    labels = [int(label) for _, label in samples]
    if options.get("kind", "cams") == "prototypes":
        from introspect.explain.prototypes import prototype_figure

        out = (
            Path(options["out"]).expanduser() if options.get("out") else run_dir / "prototypes.png"
        )
        k = _count(options.get("k", "3"), "k")
        path = prototype_figure(
            backbone, images, dm.split("train"), dm.class_names, out, k=k, labels=labels
        )
        return _log_figure(cfg, run_dir, path, "prototypes")
    out = Path(options["out"]).expanduser() if options.get("out") else run_dir / "explanations.png"
    layer = options.get("layer") or None
    path = explanation_figure(backbone, images, dm.class_names, out, layer=layer, labels=labels)
    return _log_figure(cfg, run_dir, path, "explanations")


def _log_figure(cfg: DictConfig, run_dir: Path, path: Path, key: str) -> Path:
    """Log the figure at ``path`` to W&B under ``key`` when enabled; return ``path``."""
    from lightning.pytorch.loggers import WandbLogger

    from introspect.runs.rundir import build_loggers

    if cfg.logger.wandb:
        for logger in build_loggers(cfg, run_dir):
            if isinstance(logger, WandbLogger):
                logger.log_image(key=key, images=[str(path)])
                logger.finalize("success")
    return path


def explain_main(argv: list[str], *, trust_run: bool = False) -> int:
    """Run ``explain`` with the arguments after the word ``explain``; return the exit code.

    User errors (missing run, bad option, unknown layer, bad config) print one line on stderr
    and return 2.
    """
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0 if argv else 2
    try:
        options, overrides = _parse(argv)
        run_dir, cfg = _load(options, overrides, trust_run=trust_run)
    except (ExplanationError, ConfigError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    from introspect.runs.pipeline import USER_ERRORS

    try:
        path = _explain(options, run_dir, cfg)
    except (ExplanationError, ConfigError, *USER_ERRORS) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(path)
    return 0
