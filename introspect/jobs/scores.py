"""The scores task of a finished run: OOD detection and prediction trust of every confidence
score (docs/guides/), written as ``results.json`` and ``scores.md`` to an evaluation folder of
the run (``<run>/evaluations/scores[-<tag>]``).

In-distribution samples are the run's clean test split. OOD sets are the ``scores.ood`` sets
and, with ``scores.noise``, uniform-noise images. The trust task ranks predictions on the
clean split, every ``eval.extra`` split and the corruption cells pooled into ``corrupted``:
feed-forward scores rank the backbone's predictions, ``int_*`` scores the introspective head's.
The detection task (``scores.attacks``, ``scores.corruption_detection``, ``scores.detectors``;
``introspect.stages.detection``) scores adversarial images and corruption cells of the clean
images and the OOD sets against them on held-out halves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import ConcatDataset, Dataset, Subset
from tqdm.auto import tqdm

from introspect.attacks import ATTACKS
from introspect.config import ConfigError
from introspect.corruptions.cells import is_cell
from introspect.data import DataError, ImageDataModule
from introspect.data.module import SPLITS
from introspect.data.ood import UniformNoise, ood_source
from introspect.data.samplers import seeded_subset
from introspect.data.seeding import derive_seed
from introspect.detect import (
    Detector,
    LayerMahalanobis,
    create_detector,
    default_layers,
    layer_features,
)
from introspect.detect.posthoc import POSTHOC
from introspect.jobs.job import job_loggers
from introspect.jobs.settings import TrainSettings, train_settings
from introspect.models.stage2 import IntrospectiveClassifier
from introspect.report.scores_report import (
    DETECTOR,
    DETECTOR_NOTE,
    TRUST_NOTE,
    flat_scalars,
    scores_markdown,
)
from introspect.runs.errors import PipelineError
from introspect.runs.integrity import write_sealed
from introspect.runs.provenance import results_header
from introspect.runs.trainer import console_is_terminal, resolve_device
from introspect.scores import (
    Mahalanobis,
    ood_table,
    purview_features,
    purview_score,
    score_batch,
    trust_table,
)
from introspect.stages.detection import (
    ADV_PREFIX,
    DETECTION_NOTE,
    DetectorFeatures,
    adversarial_set,
    detection_markdown,
    detection_rows,
    purview_detector_rows,
)
from introspect.stages.heads import load_heads
from introspect.stages.splits import evaluation_splits, read_source
from introspect.stages.stage1 import build_backbone, build_data
from introspect.uncertainty import MCDropout

NOISE = "noise"
CORRUPTED = "corrupted"
INTROSPECTIVE_SUFFIX = "_introspective"


@dataclass(frozen=True)
class ScoresSettings:
    """What the scores task takes from a run's configuration (``scores.*``, the MC-dropout
    settings, the run's name and whether progress bars show); built by ``from_config``."""

    train: TrainSettings
    run_name: str
    scores: DictConfig
    mc_dropout: MCDropout | None
    mc_dropout_note: str
    progress: bool

    @classmethod
    def from_config(cls, cfg: DictConfig) -> ScoresSettings:
        """The settings of ``cfg``, checked first (``ConfigError`` names the key)."""
        check_scores_config(cfg.scores, corruptions=list(cfg.eval.corruptions))
        mc = cfg.eval.mc_dropout
        train = train_settings(cfg)
        return cls(
            train=train,
            run_name=str(train.job.run.name),
            scores=cfg.scores,
            mc_dropout=MCDropout(mc.samples, mc.p, seed=mc.seed) if mc.samples > 0 else None,
            mc_dropout_note=(
                f"{mc.samples} samples, p={mc.p}, seed={mc.seed}"
                if mc.samples > 0
                else "off (eval.mc_dropout.samples=0; no mcd_* scores)"
            ),
            progress=bool(cfg.trainer.enable_progress_bar and console_is_terminal()),
        )


def check_scores_config(s: DictConfig, *, corruptions: list[str]) -> None:
    """Raise ``ConfigError`` naming the key when a value of the ``scores`` section ``s``
    cannot be used (``corruptions``: the run's ``eval.corruptions``)."""
    for key in ("batch_size", "gradtrust_k", "max_samples"):
        value = s[key]
        if value is not None and value < 1:
            raise ConfigError(f"scores.{key}={value} must be a positive integer")
    if s.odin_T <= 0:
        raise ConfigError(f"scores.odin_T={s.odin_T} must be positive")
    for key in ("odin_eps", "mahalanobis_eps"):
        if s[key] < 0:
            raise ConfigError(f"scores.{key}={s[key]} must be >= 0 (0 = no input perturbation)")
    if s.seed < 0:
        raise ConfigError(f"scores.seed={s.seed} must be a non-negative integer")
    if s.purview_detector and not s.purview:
        raise ConfigError(
            "scores.purview_detector=true needs the Purview features: set scores.purview=true"
        )
    for name in s.ood:
        where = f"scores.ood.{name}"
        if not str(name) or "/" in str(name):
            raise ConfigError(f"{where}: the name must be non-empty and contain no '/'")
        if s.noise and name == NOISE:
            raise ConfigError(
                f"{where}: 'noise' is the synthetic noise set; rename the set or set "
                "scores.noise=false"
            )
    choices = [*POSTHOC, *(f"{name}{INTROSPECTIVE_SUFFIX}" for name in POSTHOC)]
    unknown = [str(n) for n in s.posthoc if n not in choices]
    if unknown:
        raise ConfigError(f"scores.posthoc: unknown detector(s) {unknown}; choose from {choices}")
    unknown = [a for a in s.attacks if a not in ATTACKS]
    if unknown:
        raise ConfigError(
            f"scores.attacks: unknown attack(s) {unknown}; choose from {list(ATTACKS)}"
        )
    if s.corruption_detection and not corruptions:
        raise ConfigError(
            "scores.corruption_detection=true needs corruption cells: set eval.corruptions"
        )
    if not (s.ood or s.noise or s.trust or s.attacks or s.corruption_detection):
        raise ConfigError(
            "nothing to score: add scores.ood.<name>.*, scores.attacks=[...], set scores.noise, "
            "scores.trust or scores.corruption_detection to true"
        )


def ood_set(settings: ScoresSettings, dm: ImageDataModule, name: str) -> Dataset:
    """The ``scores.ood.<name>`` set, resized to the run's (square) image size: an unlabeled
    source (``introspect.data.ood``: an npz without ``y`` or with one class, any image tree,
    SVHN) or else a labelled one read with the run's data settings (its classes may differ
    from the run's). ``DataError`` names the fix."""
    entry = settings.scores.ood[name]
    data = settings.train.stage1.data
    where = f"scores.ood.{name}"
    _, height, width = dm.image_shape
    if height != width:
        raise DataError(
            f"{where}: the run's images are {height}x{width}; OOD sets are resized to a square "
            "image size, so this run needs data.image_size"
        )
    if entry.split not in (*SPLITS, "all"):
        raise DataError(
            f"{where}.split={entry.split!r} is not a split; valid: {', '.join(SPLITS)}, all"
        )
    try:
        root = Path(str(data.root)).expanduser()
        unlabeled = ood_source(entry.source, entry.path, entry.test_path, entry.split, height, root)
    except DataError as err:
        raise DataError(f"{where}: {err}") from None
    if unlabeled is not None:
        return unlabeled
    return read_source(data, entry, where, image_size=height)[1]


@dataclass
class ScoredSet:
    """Per-sample results of one set: scores by name, labels, feed-forward and introspective
    predictions (when asked for) and Purview norm vectors (for the detector)."""

    scores: dict[str, torch.Tensor]
    labels: torch.Tensor
    preds: torch.Tensor | None = None
    int_preds: torch.Tensor | None = None
    norms: torch.Tensor | None = None
    features: dict[str, torch.Tensor] | None = None

    @property
    def size(self) -> int:
        """Number of samples."""
        return int(self.labels.numel())


def posthoc_detectors(
    names: list[str],
    backbone: torch.nn.Module,
    intro: IntrospectiveClassifier | None,
    loader: Any,
) -> dict[str, Detector]:
    """The post-hoc detectors ``names`` (``scores.posthoc``) built with ``create_detector`` and
    fitted on ``loader``'s ``(images, labels)`` batches, by score name (``int_<name>`` for the
    ones on the introspective head)."""
    detectors: dict[str, Detector] = {}
    for name in names:
        if name.endswith(INTROSPECTIVE_SUFFIX):
            if intro is None:
                raise PipelineError(
                    f"scores.posthoc: {name} needs the run's introspective head, which this run "
                    "lacks; drop it from scores.posthoc"
                )
            key = "int_" + name.removesuffix(INTROSPECTIVE_SUFFIX)
            detectors[key] = create_detector(name, head=intro).fit(loader)
        else:
            detectors[name] = create_detector(name, backbone).fit(loader)
    return detectors


class SetScorer:
    """Scores every batch of a set with ``score_batch`` (plus Purview from its norm vectors) and
    keeps only the per-sample vectors, on the CPU."""

    def __init__(
        self,
        opts: ScoresSettings,
        dm: ImageDataModule,
        backbone: torch.nn.Module,
        intro: IntrospectiveClassifier | None,
        mahalanobis: Mahalanobis,
        device: torch.device,
        detector_features: DetectorFeatures | None = None,
        posthoc: dict[str, Detector] | None = None,
    ) -> None:
        self.opts = opts
        self.posthoc = posthoc or {}
        self.dm = dm
        self.backbone = backbone
        self.intro = intro
        self.mahalanobis = mahalanobis
        self.device = device
        self.detector_features = detector_features
        s = opts.scores
        self.keep_norms = s.purview and (s.purview_detector or s.detectors)
        self.mc_dropout = opts.mc_dropout

    def __call__(self, name: str, dataset: Dataset, *, with_preds: bool) -> ScoredSet:
        """Score every image of ``dataset``; with ``with_preds`` also keep the predictions."""
        s = self.opts.scores
        parts: dict[str, list[torch.Tensor]] = {}
        loader = self.dm.loader(dataset, batch_size=s.batch_size)
        for index, (images, labels) in enumerate(
            tqdm(loader, desc=f"scores {name}", disable=not self.opts.progress)
        ):
            x = images.to(self.device)
            batch = score_batch(
                self.backbone,
                x,
                introspective_head=self.intro,
                mahalanobis=self.mahalanobis,
                mahalanobis_eps=s.mahalanobis_eps,
                odin_T=s.odin_T,
                odin_eps=s.odin_eps,
                gradtrust_k=s.gradtrust_k,
                purview=False,
                with_predictions=with_preds,
                mc_dropout=self.mc_dropout,
                mc_key=derive_seed(name, index),
            )
            if s.purview:
                norms = purview_features(self.backbone, x)
                batch["purview"] = purview_score(norms, "final")
                batch["purview_initial"] = purview_score(norms, "initial")
                if self.keep_norms:
                    batch["norms"] = norms
            batch |= {key: detector.score(x) for key, detector in self.posthoc.items()}
            if self.detector_features is not None:
                batch |= {f"feature_{k}": v for k, v in self.detector_features(x).items()}
            batch["labels"] = labels
            for key, value in batch.items():
                parts.setdefault(key, []).append(value.detach().cpu())
        out = {key: torch.cat(values) for key, values in parts.items()}
        labels = out.pop("labels")
        norms = out.pop("norms", None)
        preds, int_preds = out.pop("preds", None), out.pop("int_preds", None)
        features = {
            k.removeprefix("feature_"): out.pop(k) for k in list(out) if k.startswith("feature_")
        }
        # Feed-forward scores first, then the introspective ones.
        ordered = dict(sorted(out.items(), key=lambda item: item[0].startswith("int_")))
        return ScoredSet(ordered, labels, preds, int_preds, norms, features or None)


def _trust_of(scored: ScoredSet, num_classes: int) -> dict[str, dict[str, float]]:
    """AUAC/AUFC of every score of one split: ``int_*`` scores against the introspective
    predictions, the others against the feed-forward ones."""
    assert scored.preds is not None
    ff = {k: v for k, v in scored.scores.items() if not k.startswith("int_")}
    table = trust_table(ff, scored.preds, scored.labels, num_classes)
    if scored.int_preds is not None:
        intro = {k: v for k, v in scored.scores.items() if k.startswith("int_")}
        table |= trust_table(intro, scored.int_preds, scored.labels, num_classes)
    return table


def _detector_features(
    opts: ScoresSettings,
    dm: ImageDataModule,
    backbone: torch.nn.Module,
    train: Dataset,
    device: torch.device,
) -> DetectorFeatures:
    """Fit the per-layer Mahalanobis Gaussians on the training split and keep the activations
    of ``scores.detect.lid_reference`` seeded training images as the LID reference."""
    d, s = opts.scores.detect, opts.scores
    layers = list(d.layers) if d.layers else default_layers(backbone)
    hide = not opts.progress
    loader = dm.loader(train, batch_size=s.batch_size)
    gaussians = LayerMahalanobis(dm.num_classes, layers).fit(
        backbone, tqdm(loader, desc="scores layer mahalanobis fit", disable=hide)
    )
    reference_set = seeded_subset(train, d.lid_reference, s.seed, "lid_reference")
    parts: list[list[torch.Tensor]] = [[] for _ in layers]
    with torch.no_grad():
        for images, _ in dm.loader(reference_set, batch_size=s.batch_size):
            _, acts = layer_features(backbone, images.to(device), layers)
            for part, act in zip(parts, acts, strict=True):
                part.append(act.flatten(1))
    reference = [torch.cat(p) for p in parts]
    if d.lid_k >= len(reference[0]):
        raise ConfigError(
            f"scores.detect.lid_k={d.lid_k} needs more than {len(reference[0])} reference images"
        )
    return DetectorFeatures(backbone, gaussians, reference, d)


def _detector_inputs(scored: ScoredSet) -> dict[str, torch.Tensor]:
    """Scores, detector features and Purview norms of a set, by feature name."""
    inputs = dict(scored.scores) | (scored.features or {})
    if scored.norms is not None:
        inputs["norms"] = scored.norms
    return inputs


@dataclass
class ScoreSets:
    """The image sets the scores task scores, all opened before any work."""

    in_dist: Dataset
    ood: dict[str, Dataset]
    trust: dict[str, Dataset]
    cells: dict[str, Dataset]


def score_sets(settings: ScoresSettings, dm: ImageDataModule, device: torch.device) -> ScoreSets:
    """In-distribution, OOD, trust and corruption-cell sets of ``settings.scores`` (each opened,
    so bad settings fail before any work)."""
    s = settings.scores
    test = dm.split("test")
    in_dist = seeded_subset(test, s.max_samples, s.seed, "in_distribution")
    ood_sets = {str(n): ood_set(settings, dm, str(n)) for n in s.ood}
    ood_sets = {n: seeded_subset(d, s.max_samples, s.seed, n) for n, d in ood_sets.items()}
    if s.noise:
        ood_sets[NOISE] = UniformNoise(len(in_dist), dm.image_shape, s.seed)
    trust_sets: dict[str, Dataset] = {}
    t = settings.train
    splits = (
        evaluation_splits(t.eval, t.stage1.data, dm, device)
        if s.trust or s.corruption_detection
        else {}
    )
    # Corruption cells of the very clean images scored as in-distribution (same indices).
    keep = in_dist.indices if in_dist is not test and isinstance(in_dist, Subset) else None
    cell_sets = {
        n: d if keep is None else Subset(d, list(keep))
        for n, d in splits.items()
        if is_cell(n) and s.corruption_detection
    }
    if s.trust:
        cells = [d for n, d in splits.items() if is_cell(n)]
        trust_sets = {n: d for n, d in splits.items() if not is_cell(n)}
        if cells:
            if CORRUPTED in trust_sets:
                raise PipelineError(
                    f"eval.extra.{CORRUPTED} clashes with the pooled corruption cells of the "
                    "trust task; rename that extra split"
                )
            trust_sets[CORRUPTED] = ConcatDataset(cells)
        trust_sets = {
            n: in_dist if n == "clean" else seeded_subset(d, s.max_samples, s.seed, n)
            for n, d in trust_sets.items()
        }
    return ScoreSets(in_dist, ood_sets, trust_sets, cell_sets)


@dataclass
class Scored:
    """Every set scored: in-distribution, OOD, the challenging sets of the detection task
    (with the clean image each comes from), trust splits, and the attacks' statistics."""

    in_dist: ScoredSet
    ood: dict[str, ScoredSet]
    challenging: dict[str, tuple[ScoredSet, torch.Tensor | None]]
    trust: dict[str, ScoredSet]
    attacks: dict[str, Any]
    mahalanobis_count: int


def _score_all(
    opts: ScoresSettings,
    dm: ImageDataModule,
    backbone: torch.nn.Module,
    intro: IntrospectiveClassifier | None,
    sets: ScoreSets,
    device: torch.device,
) -> Scored:
    """Fit Mahalanobis (and the detectors' features) on the train split, craft the attacks and
    score every set."""
    s = opts.scores
    with torch.inference_mode(False):
        train = dm.split("train")
        fit_loader = dm.loader(train, batch_size=s.batch_size)
        hide = not opts.progress
        mahalanobis = Mahalanobis(dm.num_classes).fit(
            backbone, tqdm(fit_loader, desc="scores mahalanobis fit", disable=hide)
        )
        features = _detector_features(opts, dm, backbone, train, device) if s.detectors else None
        attacks = {
            f"{ADV_PREFIX}{a}": adversarial_set(
                str(a), backbone, sets.in_dist, dm, s.attack, s.batch_size, device, not hide
            )
            for a in s.attacks
        }
        posthoc = posthoc_detectors(
            [str(n) for n in s.posthoc],
            backbone,
            intro,
            fit_loader,
        )
        scorer = SetScorer(opts, dm, backbone, intro, mahalanobis, device, features, posthoc)
        scored_in = scorer("in_distribution", sets.in_dist, with_preds="clean" in sets.trust)
        scored_ood = {n: scorer(n, d, with_preds=False) for n, d in sets.ood.items()}
        challenging: dict[str, tuple[ScoredSet, torch.Tensor | None]] = {
            n: (scorer(n, a.dataset, with_preds=False), a.origins)
            for n, a in attacks.items()
            if len(a.origins) >= 2  # too few successes leave nothing to detect
        }
        challenging |= {
            n: (scorer(n, d, with_preds=False), torch.arange(len(d)))  # cell row i = clean image i
            for n, d in sets.cells.items()
        }
        challenging |= {n: (o, None) for n, o in scored_ood.items()}
        scored_trust = {
            n: scored_in if n == "clean" else scorer(n, d, with_preds=True)
            for n, d in sets.trust.items()
        }
    stats = {n: a.stats for n, a in attacks.items()}
    return Scored(scored_in, scored_ood, challenging, scored_trust, stats, mahalanobis.count)


def _recorded_settings(opts: ScoresSettings, mahalanobis_count: int) -> dict[str, Any]:
    """``scores.*`` as recorded with the tables, with the Mahalanobis fit size and MC dropout."""
    settings = OmegaConf.to_container(opts.scores, resolve=True)
    assert isinstance(settings, dict)
    settings["mahalanobis_fit_samples"] = mahalanobis_count
    settings["mc_dropout"] = opts.mc_dropout_note
    return settings


def _ood_section(
    scored: Scored, settings: dict[str, Any], *, purview_detector: bool, seed: int
) -> dict[str, Any] | None:
    """The ``ood`` entry of the results (None without OOD sets)."""
    if not scored.ood:
        return None
    table = ood_table(scored.in_dist.scores, {n: o.scores for n, o in scored.ood.items()})
    ood = {
        "positive_class": "in-distribution",
        "note": "In-distribution (the clean test split) is the positive class; AUPR-Out "
        "swaps the roles. Scores are confidences (higher = more in-distribution).",
        "num_samples": {
            "in_distribution": scored.in_dist.size,
            "ood_sets": {n: o.size for n, o in scored.ood.items()},
        },
        "settings": settings,
        "scores": table,
    }
    if purview_detector:
        assert scored.in_dist.norms is not None
        ood_norms = {n: o.norms for n, o in scored.ood.items() if o.norms is not None}
        rows, held_out = purview_detector_rows(scored.in_dist.norms, ood_norms, seed)
        table[DETECTOR] = rows
        ood["purview_detector"] = {"note": DETECTOR_NOTE, "held_out_samples": held_out}
    return ood


def _detection_section(scored: Scored, seed: int) -> dict[str, Any]:
    """The ``detection`` entry of the results."""
    table, sizes = detection_rows(
        _detector_inputs(scored.in_dist),
        torch.arange(scored.in_dist.size),
        {n: (_detector_inputs(o), origins) for n, (o, origins) in scored.challenging.items()},
        seed,
    )
    return {
        "note": DETECTION_NOTE,
        "attacks": scored.attacks,
        "sizes": sizes,
        "detectors": table,
    }


def _trust_section(
    scored: Scored, settings: dict[str, Any], num_classes: int
) -> dict[str, Any] | None:
    """The ``trust`` entry of the results (None without trust splits)."""
    if not scored.trust:
        return None
    per_split = {n: _trust_of(t, num_classes) for n, t in scored.trust.items()}
    names = list(next(iter(per_split.values())))
    return {
        "note": TRUST_NOTE,
        "num_samples": {n: t.size for n, t in scored.trust.items()},
        "settings": settings,
        "scores": {score: {n: per_split[n][score] for n in per_split} for score in names},
    }


def score_run(
    opts: ScoresSettings, run_dir: Path, out_dir: Path, *, note: str | None = None
) -> dict[str, Any]:
    """Score the finished run in ``run_dir`` (its settings ``opts``, from
    ``ScoresSettings.from_config``): OOD detection and trust (see the module docstring); write
    ``results.json`` (``"run"``, ``"ood"``, ``"trust"``) and ``scores.md`` to ``out_dir``
    (e.g. ``<run>/evaluations/scores``), print the tables and log the scalars. The run's own
    ``results.json`` is not touched. Returns ``{"ood": ..., "trust": ...}`` (``None`` for a
    task not run).

    ``results.json`` is written last and atomically, once everything succeeded, sealed against
    the run's checkpoints and heads (``runs.integrity``). ``note`` (e.g. that the run's own
    record was modified) goes at the top of ``scores.md``.
    """
    started = time.perf_counter()
    s = opts.scores
    device = resolve_device(opts.train.job.trainer.accelerator)
    dm = build_data(opts.train.stage1)
    sets = score_sets(opts, dm, device)  # every data source opened before any work
    t = opts.train.of_finished_run(run_dir)
    backbone = build_backbone(t.stage1, dm.num_classes, dm.image_shape).eval().to(device)
    heads = load_heads(
        backbone, run_dir, dm.num_classes, head=t.stage2.head, features=t.stage2.features
    )
    intro = heads.get("introspective")
    if intro is not None:
        assert isinstance(intro, IntrospectiveClassifier)
        intro = intro.eval().to(device)
    scored = _score_all(opts, dm, backbone, intro, sets, device)
    settings = _recorded_settings(opts, scored.mahalanobis_count)
    ood = _ood_section(scored, settings, purview_detector=s.purview_detector, seed=s.seed)
    detection = None
    if s.attacks or s.corruption_detection or s.detectors:
        detection = _detection_section(scored, s.seed)
    trust = _trust_section(scored, settings, dm.num_classes)
    markdown = (f"{note}\n\n" if note else "") + scores_markdown(
        opts.run_name, settings, ood, trust
    )
    if detection is not None:
        markdown += "\n" + detection_markdown(detection, ood["scores"] if ood else None) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scores.md").write_text(markdown)
    print(markdown)
    for logger in job_loggers(t.job, out_dir):
        logger.log_metrics(flat_scalars(ood, trust, detection))
        logger.save()
        logger.finalize("success")
    header = results_header(
        opts.run_name, t.job.config, device=device, started=started, evaluation_of=str(run_dir)
    )
    results = {"run": header, "ood": ood, "trust": trust, "detection": detection}
    # results.json last and atomically: a failed scoring run leaves none.
    write_sealed(out_dir / "results.json", results, run_dir)
    print(f"scored in {time.perf_counter() - started:.1f} s")
    return {"ood": ood, "trust": trust, "detection": detection}
