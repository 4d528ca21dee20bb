"""Command-line front ends of a finished run's explanations: ``explain`` (figures),
``explain-eval`` (faithfulness and VOICE tables) and ``explain-network`` (inside the network).

Arguments are checked before torch is imported, so mistakes fail in a fraction of a second.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from introspect.config import ConfigError, load_run_config
from introspect.explain.errors import ExplanationError
from introspect.runs.lock import LockError, RunLock, acquire_lock

# A prepared command: the function taking its output's lock (None: nothing to lock) and the
# arguments of its work.
Prepared = tuple[Callable[[], RunLock | None], tuple[Any, ...]]

USAGE = """\
usage: explain run=runs/<name> [figure=paradigms|methods|introspection|quality] [n=8] [index=0]
               [split=test] [out=PATH.png [overwrite=true]] [layer=PATH]
               [method.<name>.<arg>=value ...] [a.b=value ...]

Explains the finished run's stage-1 backbone on images of split (train, val or test).
figure=paradigms (default): one row per image of the first n with Grad-CAM "why P?",
  Contrast-CAM "why P, rather than Q?" for the two next most likely classes and
  Counterfactual-CAM "why not P?"; written to <run>/explanations.png.
figure=methods: every map method on the first n images; <run>/explanations/methods.png
  (method.<name>.<arg>=value passes options, e.g. method.rise.masks=500).
figure=introspection: image number index, "why P, rather than Q?" for every Q: the head's
  per-class gradient features next to the Contrast-CAMs; <run>/explanations/
  introspection-<index>.png.
figure=prototypes (protopnet runs; also kind=prototypes): "this looks like that" - for each
  of the first n images the k prototypes giving the predicted class the most points, with
  their source training patches, the activation map, similarity x class weight = points and
  the per-class totals; <run>/prototypes.png. k= (default 3).
figure=quality (quality runs, the default there; also kind=quality): for each of the first n
  images of split, its score q, Grad-CAM "why q?" and Contrast-CAM "why q, rather than q'?"
  for every q' of quality.explain_contrasts (fractions of the training scores' range);
  <run>/explanations/quality.png.
out=PATH (a .png) writes the figure there instead; an existing file is replaced only with
overwrite=true, and a run's records (results.json, config.yaml, status.json, checkpoints,
heads) never. Prints the figure's path and logs it to W&B when logger.wandb=true.
layer= is the explained layer's dotted path (default: the last executed Conv2d; CAM finds
the pooled layer); other a.b=value arguments override the run's saved config.
"""

EVAL_USAGE = """\
usage: explain-eval run=runs/<name> [methods=[gradcam,rise,...]] [n=64] [split=test]
                    [cell=<corruption>/<severity>] [layer=PATH] [steps=32] [voice=true]
                    [threshold=0.1] [batch_size=16] [method.<name>.<arg>=value ...]
                    [tag=NAME] [a.b=value ...]

Faithfulness of every map method on the first n images of split (or of a corruption cell
of the test split, e.g. cell=fog/3): mean deletion AUC (lower is better), insertion AUC
(higher is better) and seconds per image; the random row is the chance reference. With
voice=true, the VOICE IoU and SNR of correct and incorrect predictions and a figure.
Results go to <run>/evaluations/explain[-<tag>]/ (results.json, explain.md, voice.png);
an existing record is never replaced. method.<name>.<arg>=value passes keyword arguments
to a method, e.g. method.rise.masks=500 method.lime.samples=200.
"""

NETWORK_USAGE = """\
usage: explain-network run=runs/<name> [n=500] [split=test] [layer=PATH] [channels=0,1,2,3]
                       [k=8] [queries=4] [out=DIR [overwrite=true]] [a.b=value ...]

Looks inside the run's backbone on the first n images of split: first-layer filters, the
activation maps of layer for the first image, the k patches that most activate each of
channels in layer, the nearest neighbours (penultimate space, L2) of the first queries
images, and a t-SNE of the penultimate features coloured by class. Writes filters.png,
activations.png, patches.png, neighbours.png and tsne.png to <run>/explanations/network/
(or out=DIR; its existing figures are replaced only with overwrite=true) and prints their
paths.
"""

# The datamodule's splits (``introspect.data.module.SPLITS``; not imported: it needs torch).
SPLITS = ("train", "val", "test")
FIGURES = ("paradigms", "methods", "introspection", "prototypes", "quality")
# ``kind=`` names the figure too (``kind=prototypes``; ``cams`` is the default figure).
KINDS = {"cams": "paradigms", "prototypes": "prototypes", "quality": "quality"}
# ``introspect.explain.methods.MAP_METHODS`` and ``REFERENCES`` (importing them needs torch).
METHOD_NAMES = (
    "gradcam",
    "gradcam_plus_plus",
    "cam",
    "counterfactual_cam",
    "contrast_cam",
    "vanilla_gradient",
    "guided_backprop",
    "deconvnet",
    "guided_gradcam",
    "smoothgrad",
    "integrated_gradients",
    "occlusion",
    "rise",
    "lime",
)
REFERENCE_NAMES = ("random",)

OPTIONS = ("run", "n", "split", "out", "overwrite", "layer", "figure", "index", "kind", "k")
EVAL_OPTIONS = (
    "run",
    "tag",
    "methods",
    "n",
    "split",
    "cell",
    "layer",
    "steps",
    "voice",
    "threshold",
    "batch_size",
)
NETWORK_OPTIONS = ("run", "n", "split", "out", "overwrite", "layer", "channels", "k", "queries")
# The figures explain-network writes into its folder.
NETWORK_FILES = ("filters.png", "activations.png", "patches.png", "neighbours.png", "tsne.png")


def _parse(
    argv: list[str], known: tuple[str, ...], *, method_options: bool = False
) -> tuple[dict[str, str], list[str], dict[str, dict[str, Any]]]:
    """The ``known`` options given (each at most once; ``run`` required), the config
    overrides and, with ``method_options``, ``method.<name>.<arg>=value`` settings."""
    options: dict[str, str] = {}
    overrides: list[str] = []
    methods: dict[str, dict[str, Any]] = {}
    for arg in argv:
        key, eq, value = arg.partition("=")
        if method_options and key.startswith("method.") and eq:
            _, _, rest = key.partition(".")
            name, dot, param = rest.partition(".")
            if not dot or not name or not param.isidentifier():
                raise ExplanationError(f"{arg!r}: write method options as method.<name>.<arg>=v")
            if name not in METHOD_NAMES + REFERENCE_NAMES:
                raise ExplanationError(f"{arg!r}: unknown method {name!r}")
            methods.setdefault(name, {})[param] = _literal(value)
        elif key not in known or not eq:
            overrides.append(arg)
        elif key in options:
            raise ExplanationError(f"{key}= is given twice")
        else:
            options[key] = value
    if not options.get("run"):
        raise ExplanationError("give the run as run=runs/<name>")
    return options, overrides, methods


def _literal(text: str) -> Any:
    """``true``/``false``, an int, a float, or the text itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _count(name: str, text: str, *, minimum: int = 1) -> int:
    try:
        n = int(text)
    except ValueError:
        n = minimum - 1
    if n < minimum:
        kind = "a positive" if minimum == 1 else "a non-negative"
        raise ExplanationError(f"{name} must be {kind} integer, got {text!r}")
    return n


def _names(text: str) -> list[str]:
    """``[a,b]``, ``a,b`` or ``a`` as a list of stripped names (``[]`` is empty)."""
    inner = text.strip().removeprefix("[").removesuffix("]")
    return [part.strip().strip("'\"") for part in inner.split(",") if part.strip()]


def _bool(name: str, text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ExplanationError(f"{name} must be true or false, got {text!r}")
    return text.lower() == "true"


def _split(options: dict[str, str]) -> str:
    split = options.get("split", "test")
    if split not in SPLITS:
        raise ExplanationError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split


def _run_config(
    options: dict[str, str], overrides: list[str], *, trust_run: bool
) -> tuple[Path, DictConfig]:
    """The run directory and its saved config with ``overrides``."""
    run_dir = Path(options["run"]).expanduser().resolve()
    if not run_dir.is_dir():
        raise ExplanationError(f"run directory {run_dir} does not exist")
    return run_dir, load_run_config(run_dir, overrides, trust_run=trust_run)


def _check_outputs(run_dir: Path, files: list[Path], *, replace: bool) -> None:
    """``ExplanationError`` when one of ``files`` (a command's outputs) is a record of a run,
    or exists and ``replace`` is false; ``ConfigError`` when one inside the run is reached
    through a symbolic link or resolves outside it."""
    from introspect.runs.rundir import check_inside, is_record

    for file in files:
        if is_record(file):
            raise ExplanationError(f"{file} is a record of a run and is never replaced")
        if run_dir in file.parents:
            check_inside(run_dir, file)
        if not replace and (file.exists() or file.is_symlink()):
            raise ExplanationError(
                f"{file} exists; pass overwrite=true to replace it, or out=<another path>"
            )


def _output_locker(
    run_dir: Path, folder: Path, files: list[Path], *, replace: bool
) -> Callable[[], RunLock | None]:
    """The function that locks ``folder`` for this process and checks ``files`` again under
    the lock (rank zero only)."""

    def lock() -> RunLock | None:
        from introspect.runs.rundir import is_secondary_process

        if is_secondary_process():
            return None
        held = acquire_lock(folder, f"output folder {folder}")
        try:
            _check_outputs(run_dir, files, replace=replace)
        except BaseException:
            held.release()
            raise
        return held

    return lock


def _fail(err: BaseException) -> int:
    print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
    return 2


def _main(
    argv: list[str],
    usage: str,
    prepare: Callable[[list[str], bool], Prepared],
    work: Callable[..., list[Path] | Path | None],
    *,
    trust_run: bool,
) -> int:
    """Print ``usage`` for no/help arguments; ``prepare`` (no torch), lock the output, then
    ``work``; user errors print one line and give 2."""
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(usage)
        return 0 if argv else 2
    try:
        locker, prepared = prepare(argv, trust_run)
        lock = locker()
    except (ExplanationError, ConfigError, LockError) as err:
        return _fail(err)
    try:
        from introspect.jobs.errors import USER_ERRORS, quiet_library_warnings

        quiet_library_warnings()
        try:
            result = work(*prepared)
        except (ExplanationError, ConfigError, *USER_ERRORS) as err:
            return _fail(err)
    finally:
        if lock is not None:
            lock.release()
    paths = result if isinstance(result, list) else [result] if result is not None else []
    for path in paths:
        print(path)
    return 0


# ---- explain ---------------------------------------------------------------------------------


def _prepare_explain(argv: list[str], trust_run: bool) -> Prepared:
    options, overrides, method_options = _parse(argv, OPTIONS, method_options=True)
    _count("n", options.get("n", "8"))
    _count("index", options.get("index", "0"), minimum=0)
    _count("k", options.get("k", "3"))
    _split(options)
    if "kind" in options:
        if options["kind"] not in KINDS:
            raise ExplanationError(
                f"kind must be one of {', '.join(KINDS)}, got {options['kind']!r}"
            )
        if "figure" in options and options["figure"] != KINDS[options["kind"]]:
            raise ExplanationError("kind= and figure= name different figures; give one of them")
        options["figure"] = KINDS[options["kind"]]
    figure = options.get("figure", "paradigms")
    if figure not in FIGURES:
        raise ExplanationError(f"figure must be one of {', '.join(FIGURES)}, got {figure!r}")
    if method_options and figure != "methods":
        raise ExplanationError("method.<name>.<arg>= options apply to figure=methods only")
    unknown = sorted(set(method_options) - set(METHOD_NAMES))
    if unknown:
        raise ExplanationError(f"figure=methods draws no method {', '.join(unknown)}")
    run_dir, cfg = _run_config(options, overrides, trust_run=trust_run)
    if cfg.task == "quality":
        if options.setdefault("figure", "quality") != "quality":
            raise ExplanationError(f"{run_dir} is a quality run; it draws figure=quality only")
    elif figure == "quality":
        raise ExplanationError("figure=quality explains quality runs (task=quality) only")
    replace = _bool("overwrite", options.get("overwrite", "false"))
    if options.get("out"):
        out = Path(options["out"]).expanduser().absolute()
        _check_outputs(run_dir, [out], replace=True)  # a record, never
        if out.suffix.lower() != ".png":
            raise ExplanationError(f"out={options['out']} must name a .png file")
    else:  # the command's own figure in the run: drawn again each time
        out, replace = _default_figure(options, run_dir), True
    options["out"] = str(out)
    _check_outputs(run_dir, [out], replace=replace)
    locker = _output_locker(run_dir, out.parent, [out], replace=replace)
    return locker, (options, method_options, run_dir, cfg)


def _default_figure(options: dict[str, str], run_dir: Path) -> Path:
    """Where the figure of ``options`` goes without ``out=``."""
    figure = options.get("figure", "paradigms")
    index = _count("index", options.get("index", "0"), minimum=0)
    return {
        "paradigms": run_dir / "explanations.png",
        "methods": run_dir / "explanations" / "methods.png",
        "introspection": run_dir / "explanations" / f"introspection-{index}.png",
        "prototypes": run_dir / "prototypes.png",
        "quality": run_dir / "explanations" / "quality.png",
    }[figure]


def _quality_explain(options: dict[str, str], run_dir: Path, cfg: DictConfig) -> Path:
    """The Contrast-CAM figure of a quality run; returns its path."""
    import numpy as np

    from introspect.explain.quality_maps import quality_figure
    from introspect.jobs.quality import database_title, load_quality_run
    from introspect.quality.introspection import contrast_levels

    n = _count("n", options.get("n", "4"))
    split = _split(options)
    model, dataset, splits, _ = load_quality_run(cfg, run_dir)
    chosen = splits[split][:n].tolist()
    levels = contrast_levels(list(cfg.quality.explain_contrasts), dataset.scores[splits["train"]])
    return quality_figure(
        model,
        dataset.images(chosen),
        [float(q) for q in np.asarray(levels)],
        Path(options["out"]),
        layer=options.get("layer") or None,
        targets=[float(dataset.scores[i]) for i in chosen],
        label=database_title(dataset, cfg.quality.label),
    )


def _explain(
    options: dict[str, str],
    method_options: dict[str, dict[str, Any]],
    run_dir: Path,
    cfg: DictConfig,
) -> Path:
    """Load the run's backbone, draw the figure, log it; return the figure's path."""
    import torch
    from lightning.pytorch.loggers import WandbLogger

    from introspect.explain.figure import explanation_figure, introspection_figure, methods_figure
    from introspect.explain.methods import MAP_METHODS
    from introspect.jobs.explain import _backbone, check_method_options
    from introspect.jobs.job import job_loggers, job_settings, with_stage1_checkpoint
    from introspect.jobs.settings import train_settings
    from introspect.runs.trainer import resolve_device
    from introspect.stages.stage1 import build_data

    figure = options.get("figure", "paradigms")
    if figure == "quality":
        return _quality_explain(options, run_dir, cfg)
    check_method_options(method_options)
    n = _count("n", options.get("n", "8"))
    index = _count("index", options.get("index", "0"), minimum=0)
    split = _split(options)
    dm = build_data(train_settings(cfg).stage1)
    device = resolve_device(cfg.trainer.accelerator)
    cfg = with_stage1_checkpoint(cfg, run_dir)
    backbone = _backbone(cfg, dm, device)
    dataset = dm.split(split)
    wanted = [index] if figure == "introspection" else list(range(min(n, len(dataset))))
    if not wanted or wanted[-1] >= len(dataset):
        raise ExplanationError(f"the {split} split has {len(dataset)} images; pick fewer")
    samples = [dataset[i] for i in wanted]
    images = torch.stack([image for image, _ in samples]).to(device)
    labels = [int(label) for _, label in samples]
    layer = options.get("layer") or None
    out = Path(options["out"])  # checked and filled in by _prepare_explain
    title = f"run {run_dir.name}"
    names = [f"{split} image {i}" for i in wanted]
    if figure == "paradigms":
        path = explanation_figure(
            backbone,
            images,
            dm.class_names,
            out,
            layer=layer,
            labels=labels,
            title=title,
            image_names=names,
        )
    elif figure == "methods":
        path = methods_figure(
            backbone,
            images,
            dm.class_names,
            out,
            MAP_METHODS,
            layer=layer,
            options=method_options,
            labels=labels,
            title=title,
            image_names=names,
        )
    elif figure == "prototypes":
        from introspect.explain.prototypes import prototype_figure

        k = _count("k", options.get("k", "3"))
        path = prototype_figure(
            backbone, images, dm.split("train"), dm.class_names, out, k=k, labels=labels
        )
    else:
        path = introspection_figure(
            backbone, images[0], dm.class_names, out, layer=layer, label=labels[0]
        )
    if cfg.logger.wandb:
        for logger in job_loggers(job_settings(cfg), run_dir):
            if isinstance(logger, WandbLogger):
                key = "explanations" if figure == "paradigms" else f"explanations/{figure}"
                logger.log_image(key=key, images=[str(path)])
                logger.finalize("success")
    return path


def explain_main(argv: list[str], *, trust_run: bool = False) -> int:
    """Run ``explain`` with the arguments after the word ``explain``; return the exit code.

    User errors (missing run, bad option, unknown layer, bad config) print one line on stderr
    and return 2.
    """
    return _main(argv, USAGE, _prepare_explain, _explain, trust_run=trust_run)


# ---- explain-eval ----------------------------------------------------------------------------


def eval_options(argv: list[str]) -> tuple[dict[str, str], list[str], Any]:
    """The parsed ``explain-eval`` arguments: raw options, config overrides and the
    ``EvalOptions`` fields as a dict (checked without importing torch)."""
    options, overrides, method_options = _parse(argv, EVAL_OPTIONS, method_options=True)
    default = ",".join(METHOD_NAMES + REFERENCE_NAMES)
    methods = _names(options.get("methods", default))
    unknown = [m for m in methods if m not in METHOD_NAMES + REFERENCE_NAMES]
    if unknown:
        raise ExplanationError(
            f"unknown method(s) {', '.join(unknown)}; valid: "
            f"{', '.join(METHOD_NAMES + REFERENCE_NAMES)}"
        )
    if len(set(methods)) != len(methods):
        raise ExplanationError("methods= lists a method twice")
    unused = sorted(set(method_options) - set(methods))
    if unused:
        raise ExplanationError(f"method options given for methods not evaluated: {unused}")
    cell = options.get("cell") or None
    if cell is not None:
        name, slash, severity = cell.partition("/")
        if not slash or not name or severity not in ("1", "2", "3", "4", "5"):
            raise ExplanationError(f"cell must be <corruption>/<severity 1-5>, got {cell!r}")
    try:
        threshold = float(options.get("threshold", "0.1"))
    except ValueError:
        threshold = -1.0
    if not 0 <= threshold < 1:
        raise ExplanationError(
            f"threshold must be a number in [0, 1), got {options.get('threshold')!r}"
        )
    voice = _bool("voice", options.get("voice", "true"))
    if not methods and not voice:
        raise ExplanationError("nothing to evaluate: give methods= or voice=true")
    fields = {
        "methods": methods,
        "n": _count("n", options.get("n", "64")),
        "split": _split(options),
        "cell": cell,
        "layer": options.get("layer") or None,
        "steps": _count("steps", options.get("steps", "32")),
        "voice": voice,
        "threshold": threshold,
        "batch_size": _count("batch_size", options.get("batch_size", "16")),
        "method_options": method_options,
    }
    return options, overrides, fields


def _eval_tag(options: dict[str, str], cell: str | None) -> str:
    tag = options.get("tag")
    if tag is None and cell is not None:
        tag = cell.replace("/", "-")
    return f"explain-{tag}" if tag else "explain"


def _prepare_eval(argv: list[str], trust_run: bool) -> Prepared:
    from introspect.runs.rundir import evaluation_dir, is_secondary_process, lock_evaluation

    options, overrides, fields = eval_options(argv)
    run_dir, cfg = _run_config(options, overrides, trust_run=trust_run)
    out_dir = evaluation_dir(run_dir, _eval_tag(options, fields["cell"]))

    def lock() -> RunLock | None:
        return None if is_secondary_process() else lock_evaluation(run_dir, out_dir)

    return lock, (cfg, run_dir, out_dir, fields)


def _eval(cfg: DictConfig, run_dir: Path, out_dir: Path, fields: dict[str, Any]) -> Path:
    from introspect.jobs.explain import EvalOptions, check_method_options, explain_eval

    options = EvalOptions(**fields)
    check_method_options(options.method_options)
    explain_eval(cfg, run_dir, out_dir, options)
    return out_dir / "results.json"


def explain_eval_main(argv: list[str], *, trust_run: bool = False) -> int:
    """Run ``explain-eval`` with the arguments after its name; return the exit code (2 with a
    one-line message for user errors)."""
    return _main(argv, EVAL_USAGE, _prepare_eval, _eval, trust_run=trust_run)


# ---- explain-network -------------------------------------------------------------------------


def _prepare_network(argv: list[str], trust_run: bool) -> Prepared:
    options, overrides, _ = _parse(argv, NETWORK_OPTIONS)
    channels = _names(options.get("channels", "0,1,2,3"))
    if not channels or not all(c.isdigit() for c in channels):
        raise ExplanationError(
            f"channels must be non-negative integers such as 0,1,2, got {options['channels']!r}"
        )
    fields = {
        "n": _count("n", options.get("n", "500")),
        "split": _split(options),
        "layer": options.get("layer") or None,
        "channels": [int(c) for c in channels],
        "k": _count("k", options.get("k", "8")),
        "queries": _count("queries", options.get("queries", "4")),
    }
    run_dir, cfg = _run_config(options, overrides, trust_run=trust_run)
    out = options.get("out")
    replace = _bool("overwrite", options.get("overwrite", "false"))
    if out:
        out_dir = Path(out).expanduser().absolute()
    else:  # the command's own folder in the run: drawn again each time
        out_dir, replace = run_dir / "explanations" / "network", True
    files = [out_dir / name for name in NETWORK_FILES]
    _check_outputs(run_dir, [out_dir, *files], replace=True)  # the folder may exist
    _check_outputs(run_dir, files, replace=replace)
    locker = _output_locker(run_dir, out_dir, files, replace=replace)
    return locker, (cfg, run_dir, out_dir, fields)


def _network(cfg: DictConfig, run_dir: Path, out_dir: Path, fields: dict[str, Any]) -> list[Path]:
    from introspect.jobs.explain import NetworkOptions, explain_network

    return explain_network(cfg, run_dir, out_dir, NetworkOptions(**fields))


def explain_network_main(argv: list[str], *, trust_run: bool = False) -> int:
    """Run ``explain-network`` with the arguments after its name; return the exit code (2
    with a one-line message for user errors)."""
    return _main(argv, NETWORK_USAGE, _prepare_network, _network, trust_run=trust_run)
