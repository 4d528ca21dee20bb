"""The detection task of ``evaluate.py scores``: challenging sets (adversarial images of the
clean test images, corruption cells of them, OOD sets) against the clean images, with LID,
the four Mahalanobis detectors, the Purview detector and the unsupervised scores, all reported
on held-out halves; and the tables of the seeds' layout."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset
from tqdm.auto import tqdm

from introspect.attacks import attack_by_name
from introspect.config.schema import AttackConfig, DetectConfig
from introspect.data import DataError, ImageDataModule
from introspect.data.seeding import derive_seed
from introspect.detect import Halves, LayerMahalanobis, LogisticDetector, halves, held_out_metrics
from introspect.detect.lid import lid_features
from introspect.metrics.ood import ood_metrics
from introspect.scores import PurviewDetector

ADV_PREFIX = "adv_"
Scorer = Callable[[torch.Tensor], torch.Tensor]
Fit = Callable[[torch.Tensor, torch.Tensor], Scorer]
DETECTOR_LABELS = {
    "lid": "LID",
    "mahalanobis_v": "M(V)",
    "mahalanobis_p": "M(P)",
    "mahalanobis_fe": "M(FE)",
    "mahalanobis_p_fe": "M(P+FE)",
    "purview_detector": "Purview",
    "msp": "MSP",
    "odin": "ODIN",
    "energy": "energy",
    "int_msp": "INT MSP",
    "int_odin": "INT ODIN",
}
DETECTION_NOTE = (
    "Every set is split in two halves by the clean image its samples come from (OOD sets by "
    "sample); supervised detectors (LID, M(FE), M(P+FE), Purview) are fitted on one half of "
    "the clean images and of the set and every detector is reported on the other halves only. "
    "Clean test images are the positive (in-distribution) class."
)


def attack_kwargs(name: str, a: AttackConfig) -> dict[str, Any]:
    """Keyword arguments of attack ``name`` from the ``scores.attack`` settings."""
    if name == "cw":
        return {"c": a.cw_c, "kappa": a.cw_kappa, "steps": a.cw_steps, "lr": a.cw_lr}
    if name == "fgsm":
        return {"eps": a.eps}
    kwargs = {"eps": a.eps, "alpha": a.alpha, "steps": a.steps}
    return kwargs | ({"seed": a.seed} if name == "pgd" else {})


@dataclass
class AdversarialSet:
    """Successful adversarial images of the correctly classified clean images, with the index
    of their clean image (``origins``) and the attack's statistics."""

    dataset: Dataset
    origins: torch.Tensor
    stats: dict[str, float]


def adversarial_set(
    name: str,
    backbone: nn.Module,
    clean: Dataset,
    dm: ImageDataModule,
    a: AttackConfig,
    batch_size: int,
    device: torch.device,
    progress: bool,
) -> AdversarialSet:
    """Attack every clean image; keep the successful ones of the correctly classified images.
    Success rate = misclassified adversarial / correctly classified clean images."""
    attack, kwargs = attack_by_name(name), attack_kwargs(name, a)
    kept: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    origins: list[torch.Tensor] = []
    correct = fooled = 0
    linf = l2 = 0.0
    start, offset = time.perf_counter(), 0
    for images, y in tqdm(dm.loader(clean, batch_size=batch_size), desc=name, disable=not progress):
        x, y = images.to(device), y.to(device)
        with torch.no_grad():
            right = backbone(x).argmax(1) == y
        adv = attack(backbone, x, y, **kwargs)
        with torch.no_grad():
            success = right & (backbone(adv).argmax(1) != y)
        delta = (adv - x)[success].flatten(1)
        if len(delta):
            linf += float(delta.abs().amax(1).sum())
            l2 += float(delta.norm(dim=1).sum())
        correct += int(right.sum())
        fooled += int(success.sum())
        kept.append(adv[success].cpu())
        labels.append(y[success].cpu())
        origins.append(torch.nonzero(success).flatten().cpu() + offset)
        offset += len(x)
    n = max(fooled, 1)
    stats = {
        "success_rate": fooled / max(correct, 1),
        "correct_clean": correct,
        "adversarial": fooled,
        "mean_linf": linf / n,
        "mean_l2": l2 / n,
        "seconds": round(time.perf_counter() - start, 2),
    }
    dataset = TensorDataset(torch.cat(kept), torch.cat(labels))
    return AdversarialSet(dataset, torch.cat(origins), stats)


class DetectorFeatures:
    """Per-batch features of the detectors: LID of every layer, per-layer Mahalanobis
    confidences without (``maha_v``) and with input preprocessing (``maha_p``)."""

    def __init__(
        self,
        backbone: nn.Module,
        mahalanobis: LayerMahalanobis,
        reference: list[torch.Tensor],
        d: DetectConfig,
    ) -> None:
        self.backbone = backbone
        self.mahalanobis = mahalanobis
        self.reference = reference
        self.k = d.lid_k
        self.eps = d.mahalanobis_eps

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"lid", "maha_v", "maha_p"}``, each ``(B, L)``."""
        layers = self.mahalanobis.layers
        return {
            "lid": lid_features(self.backbone, x, self.reference, layers, self.k),
            "maha_v": self.mahalanobis.scores(self.backbone, x),
            "maha_p": self.mahalanobis.scores(self.backbone, x, eps=self.eps),
        }


def _purview_fit(seed: int) -> Fit:
    def fit(f_in: torch.Tensor, f_out: torch.Tensor) -> Scorer:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            detector = PurviewDetector(f_in.shape[1]).fit(f_in, f_out)

        def score(f: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return detector(f)

        return score

    return fit


def _logistic_fit(seed: int) -> Fit:
    def fit(f_in: torch.Tensor, f_out: torch.Tensor) -> Scorer:
        return LogisticDetector(seed).fit(f_in, f_out).score

    return fit


def _unsupervised(f_in: torch.Tensor, f_out: torch.Tensor) -> Scorer:
    return lambda f: f


def detection_rows(
    clean: Mapping[str, torch.Tensor],
    clean_origins: torch.Tensor,
    sets: Mapping[str, tuple[Mapping[str, torch.Tensor], torch.Tensor | None]],
    seed: int,
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, dict[str, int]]]:
    """``table[detector][set] = metrics`` on held-out halves, and the sizes of the halves.

    ``clean`` and every ``sets[name][0]`` map feature names to per-sample tensors: unsupervised
    scores ``(N,)`` by score name, and the matrices ``lid``, ``maha_v``, ``maha_p`` (``(N, L)``)
    and ``norms`` (Purview). ``sets[name][1]`` are the clean indices its samples were made from
    (adversarial images, corruption cells: their halves follow the clean images'), or ``None``
    for a set of its own (OOD: seeded halves of its samples)."""
    split_in = halves(clean_origins, seed, "in_distribution")
    table: dict[str, dict[str, dict[str, float]]] = {}
    sizes: dict[str, dict[str, int]] = {}
    for name, (features, origins) in sets.items():
        if origins is None:
            split_out = halves(torch.arange(len(next(iter(features.values())))), seed, name)
        else:
            split_out = _paired_halves(origins, clean_origins, split_in)
        sizes[name] = {"fit": len(split_out.fit), "held_out": len(split_out.held_out)}
        for detector, (key, fit) in _detectors(clean, seed).items():
            if key not in features:
                continue
            f_in, f_out = _column(clean[key], detector), _column(features[key], detector)
            row = held_out_metrics(f_in, f_out, split_in, split_out, fit)
            table.setdefault(detector, {})[name] = row
    sizes["in_distribution"] = {"fit": len(split_in.fit), "held_out": len(split_in.held_out)}
    return table, sizes


def _paired_halves(origins: torch.Tensor, clean_origins: torch.Tensor, split_in: Halves) -> Halves:
    """The halves of a set made from clean images: a row is in the fit half when its clean
    image is."""
    in_fit = torch.isin(origins, clean_origins[split_in.fit])
    rows = torch.arange(len(origins))
    return Halves(rows[in_fit], rows[~in_fit])


def _detectors(clean: Mapping[str, torch.Tensor], seed: int) -> dict[str, tuple[str, Fit]]:
    """detector name -> (feature key, fit callback)."""
    found: dict[str, tuple[str, Fit]] = {}
    if "lid" in clean:
        found["lid"] = ("lid", _logistic_fit(seed))
    if "maha_v" in clean:
        found["mahalanobis_v"] = ("maha_v", _unsupervised)
        found["mahalanobis_p"] = ("maha_p", _unsupervised)
        found["mahalanobis_fe"] = ("maha_v", _logistic_fit(seed))
        found["mahalanobis_p_fe"] = ("maha_p", _logistic_fit(seed))
    if "norms" in clean:
        found["purview_detector"] = ("norms", _purview_fit(seed))
    for score in clean:
        if score not in ("lid", "maha_v", "maha_p", "norms"):
            found[score] = (score, _unsupervised)
    return found


def _column(features: torch.Tensor, detector: str) -> torch.Tensor:
    """The penultimate (last) column for M(V) and M(P); the features themselves otherwise."""
    if detector in ("mahalanobis_v", "mahalanobis_p"):
        return features[:, -1]
    return features


# ---------------------------------------------------------------- tables


def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def attack_table(
    table: Mapping[str, Mapping[str, Mapping[str, float]]],
    attacks: Mapping[str, Mapping[str, float]],
    detectors: list[str],
) -> str:
    """Markdown: one row per attack (its success rate first), one AUROC column per detector."""
    header = ["attack", "success %"] + [DETECTOR_LABELS.get(d, d) for d in detectors]
    rows = []
    for name, stats in attacks.items():
        cells = [_pct(table.get(d, {}).get(name, {}).get("auroc")) for d in detectors]
        rows.append([name.removeprefix(ADV_PREFIX), _pct(stats["success_rate"]), *cells])
    return _md(header, rows)


def corruption_table(
    table: Mapping[str, Mapping[str, Mapping[str, float]]], cells: list[str], detector: str
) -> str:
    """Markdown of one detector's AUROC: one row per corruption, one column per level."""
    corruptions = list(dict.fromkeys(c.split("/")[0] for c in cells))
    levels = sorted({int(c.split("/")[1]) for c in cells})
    by_set = table.get(detector, {})
    rows = [
        [c] + [_pct(by_set.get(f"{c}/{lvl}", {}).get("auroc")) for lvl in levels]
        for c in corruptions
    ]
    return _md(["corruption"] + [f"level {lvl}" for lvl in levels], rows)


def ood_ff_int_table(ood_scores: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Markdown in the seeds' Table 3 layout: per OOD set, FF against introspective (INT) MSP
    and ODIN, AUROC / FPR95 both ways / detection accuracy (the whole sets, unsupervised)."""
    pairs = [("msp", "int_msp"), ("odin", "int_odin")]
    sets = list(next(iter(ood_scores.values()), {}))
    header = ["OOD set", "metric", "MSP FF", "MSP INT", "ODIN FF", "ODIN INT"]
    rows = []
    for name in sets:
        for metric, label in (
            ("auroc", "AUROC"),
            ("fpr95_ood", "FPR(OOD)@95%ID"),
            ("fpr95_id", "FPR(ID)@95%OOD"),
            ("detection_error", "Det. acc."),
        ):
            cells = []
            for ff, intro in pairs:
                for score in (ff, intro):
                    value = ood_scores.get(score, {}).get(name, {}).get(metric)
                    if value is not None and metric == "detection_error":
                        value = 1 - value
                    cells.append(_pct(value))
            rows.append([name, label, *cells])
    return _md(header, rows)


def detection_markdown(detection: Mapping[str, Any], ood_scores: Mapping[str, Any] | None) -> str:
    """The detection sections of ``scores.md``."""
    table, attacks = detection["detectors"], detection["attacks"]
    present = [d for d in DETECTOR_LABELS if d in table]
    parts = ["## Detection of challenging inputs", DETECTION_NOTE]
    if attacks:
        parts += [
            "### Adversarial detection (AUROC %, held-out halves)",
            attack_table(table, attacks, present),
        ]
        stats = ", ".join(
            f"{n.removeprefix(ADV_PREFIX)} {s['adversarial']}/{s['correct_clean']} "
            f"(L-inf {s['mean_linf']:.4f}, L2 {s['mean_l2']:.3f}, {s['seconds']} s)"
            for n, s in attacks.items()
        )
        parts.append(f"Successful / correctly classified clean images: {stats}.")
    cells = [n for n in detection["sizes"] if "/" in n]
    if cells:
        parts.append("### Corrupted-input detection (AUROC %, held-out halves)")
        for detector in [
            d
            for d in ("mahalanobis_v", "mahalanobis_fe", "lid", "purview_detector", "msp")
            if d in table
        ]:
            parts += [f"**{DETECTOR_LABELS[detector]}**", corruption_table(table, cells, detector)]
    if ood_scores:
        parts += [
            "### OOD detection, feed-forward (FF) against introspective (INT), whole sets (%)",
            ood_ff_int_table(ood_scores),
        ]
    every = [n for n in detection["sizes"] if n != "in_distribution"]
    rows = [[n] + [_pct(table[d].get(n, {}).get("auroc")) for d in present] for n in every]
    parts += [
        "### Every set (AUROC %, held-out halves; all scores in results.json)",
        _md(["set"] + [DETECTOR_LABELS[d] for d in present], rows),
    ]
    return "\n\n".join(parts)


def purview_detector_rows(
    in_norms: torch.Tensor, ood_norms: Mapping[str, torch.Tensor], seed: int
) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """Metrics of one supervised ``PurviewDetector`` per OOD set (``ood_norms``: its Purview
    features; ``in_norms``: the in-distribution ones), each fitted on a seeded half and measured
    on the held-out halves, and the numbers of held-out samples."""

    def halves(norms: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if len(norms) < 2:
            raise DataError(
                f"the supervised Purview detector needs at least 2 samples of {name!r}; raise "
                "scores.max_samples or set scores.purview_detector=false"
            )
        g = torch.Generator().manual_seed(derive_seed(seed, name))
        order = torch.randperm(len(norms), generator=g)
        cut = len(norms) // 2
        return norms[order[:cut]], norms[order[cut:]]

    in_fit, in_eval = halves(in_norms, "in-distribution")
    rows: dict[str, dict[str, float]] = {}
    held_out = {"in_distribution": len(in_eval)}
    for name, norms in ood_norms.items():
        out_fit, out_eval = halves(norms, name)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            detector = PurviewDetector(in_fit.shape[1]).fit(in_fit, out_fit)
        with torch.no_grad():
            values = ood_metrics(detector(in_eval), detector(out_eval))
        rows[name] = {metric: float(value) for metric, value in values.items()}
        held_out[name] = len(out_eval)
    return rows, held_out
