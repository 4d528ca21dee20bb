"""Every score of a batch, and the OOD-detection and trust result tables built from scores."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from introspect.backbones.head import resolve_head
from introspect.metrics.ood import auac, aufc, ood_metrics
from introspect.models.stage2 import IntrospectiveClassifier
from introspect.scores.gradient import gradnorm, gradtrust, purview_features, purview_score
from introspect.scores.introspective import introspective_odin
from introspect.scores.model_based import (
    ODIN_EPS,
    ODIN_T,
    Mahalanobis,
    logits_and_penultimate,
    odin,
)
from introspect.scores.output import energy, entropy, margin, max_logit, msp, nll
from introspect.uncertainty import MCDropout

OOD_METRICS = ("auroc", "fpr95_ood", "fpr95_id", "aupr_in", "aupr_out", "detection_error")
OOD_METRIC_LABELS = {
    "auroc": "AUROC",
    "fpr95_ood": "FPR(OOD)@95%ID",
    "fpr95_id": "FPR(ID)@95%OOD",
    "aupr_in": "AUPR-In",
    "aupr_out": "AUPR-Out",
    "detection_error": "Det. err.",
}
TRUST_METRICS = ("auac", "aufc")


def score_batch(
    backbone: nn.Module,
    images: torch.Tensor,
    *,
    introspective_head: IntrospectiveClassifier | None = None,
    mahalanobis: Mahalanobis | None = None,
    mahalanobis_eps: float = 0.0,
    odin_T: float = ODIN_T,
    odin_eps: float = ODIN_EPS,
    gradtrust_k: int = 3,
    purview: bool = True,
    head: nn.Linear | None = None,
    with_predictions: bool = False,
    mc_dropout: MCDropout | None = None,
    mc_key: int = 0,
) -> dict[str, torch.Tensor]:
    """Every confidence score of ``images`` (RGB in ``[0, 1]``), as detached ``(B,)`` tensors.

    Keys: ``msp``, ``max_logit``, ``entropy``, ``margin``, ``energy``, ``odin``, ``gradnorm``,
    ``gradtrust`` (released form), ``gradtrust_paper``, ``nll`` (log-probability of the
    prediction); with ``mc_dropout`` (an ``MCDropout``; ``mc_key`` varies its draws per batch)
    ``mcd_bald`` and ``mcd_expected_entropy`` (negated); with ``purview`` (per-sample gradients of
    every parameter, the most expensive score) ``purview`` and ``purview_initial`` (the
    released score on the final / initial part of the parameter list); with ``mahalanobis`` (a
    fitted ``Mahalanobis``) ``mahalanobis``; with ``introspective_head`` ``int_msp`` and
    ``int_odin`` (ODIN with the same ``odin_T``/``odin_eps``). ``head`` is the backbone's last
    linear layer (default ``backbone.head``). ``with_predictions`` adds the predicted classes of
    the same passes, ``preds`` (backbone) and ``int_preds`` (introspective head), which are not
    scores. Works under ``torch.inference_mode``; the backbone (and ``introspective_head``)
    must be in eval mode.
    """
    with torch.inference_mode(False), torch.enable_grad():
        x = images.detach().clone()
        with torch.no_grad():
            logits, penultimate = logits_and_penultimate(backbone, x, head)
        scores = {
            "msp": msp(logits),
            "max_logit": max_logit(logits),
            "entropy": entropy(logits),
            "margin": margin(logits),
            "energy": energy(logits),
            "odin": odin(backbone, x, T=odin_T, eps=odin_eps),
            "gradnorm": gradnorm(logits, penultimate),
            "gradtrust": gradtrust(logits, form="released"),
            "gradtrust_paper": gradtrust(logits, form="paper", k=gradtrust_k),
            "nll": nll(logits),
        }
        if mc_dropout is not None:
            samples = mc_dropout.sample_logits(
                backbone,
                x,
                penultimate=penultimate,
                key=mc_key,
                head=resolve_head(backbone, head or getattr(backbone, "head", None), x[:1]),
            )
            scores |= mc_dropout.scores(samples)
        if purview:
            norms = purview_features(backbone, x)
            scores["purview"] = purview_score(norms, "final")
            scores["purview_initial"] = purview_score(norms, "initial")
        if mahalanobis is not None:
            scores["mahalanobis"] = mahalanobis.score_images(
                backbone, x, eps=mahalanobis_eps, head=head
            )
        if with_predictions:
            scores["preds"] = logits.argmax(1)
        if introspective_head is not None:
            with torch.no_grad():
                int_logits = introspective_head(x)
            scores["int_msp"] = msp(int_logits)
            scores["int_odin"] = introspective_odin(introspective_head, x, T=odin_T, eps=odin_eps)
            if with_predictions:
                scores["int_preds"] = int_logits.argmax(1)
    return {name: value.detach() for name, value in scores.items()}


def ood_table(
    scores_in: Mapping[str, torch.Tensor],
    scores_out: Mapping[str, Mapping[str, torch.Tensor]],
) -> dict[str, dict[str, dict[str, float]]]:
    """``table[score][ood_set][metric]`` for every score of ``scores_in`` (in-distribution
    scores by score name) and every OOD set of ``scores_out`` (``scores_out[ood_set][score]``).

    Metrics (floats in ``[0, 1]``, in-distribution = positive class): ``auroc``, ``fpr95_ood``
    (FPR of OOD at 95 % ID recall), ``fpr95_id`` (FPR of ID at 95 % OOD recall: OOD =
    positive), ``aupr_in``, ``aupr_out`` (OOD = positive there), ``detection_error``.
    """
    for ood_set, by_score in scores_out.items():
        missing = [name for name in scores_in if name not in by_score]
        if missing:
            raise ValueError(f"OOD set {ood_set!r} lacks the scores {missing}")
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name, s_in in scores_in.items():
        table[name] = {}
        for ood_set, by_score in scores_out.items():
            values = ood_metrics(s_in, by_score[name])
            table[name][ood_set] = {m: float(values[m]) for m in OOD_METRICS}
    return table


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def format_ood_table(
    table: Mapping[str, Mapping[str, Mapping[str, float]]],
    metrics: tuple[str, ...] = OOD_METRICS,
    digits: int = 2,
) -> str:
    """Markdown of an ``ood_table``: one row per score, one column per OOD set and metric, values
    in percent, preceded by a line stating the positive class and the better directions."""
    unknown = [m for m in metrics if m not in OOD_METRIC_LABELS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {OOD_METRICS}")
    ood_sets = list(next(iter(table.values()), {}))
    header = ["score"] + [f"{s} {OOD_METRIC_LABELS[m]}" for s in ood_sets for m in metrics]
    rows = [
        [name] + [f"{100 * by_set[s][m]:.{digits}f}" for s in ood_sets for m in metrics]
        for name, by_set in table.items()
    ]
    note = (
        "In-distribution = positive class (AUPR-Out and FPR(ID)@95%OOD: OOD = positive). "
        "FPR(OOD)@95%ID: OOD accepted when 95 % of ID is; FPR(ID)@95%OOD: ID rejected when 95 % "
        "of OOD is. Values in %; AUROC and AUPR higher is better, FPRs and detection error "
        "lower is better."
    )
    return note + "\n\n" + _markdown(header, rows)


def trust_table(
    scores: Mapping[str, torch.Tensor],
    preds: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    num_points: int = 100,
) -> dict[str, dict[str, float]]:
    """``table[score] = {"auac", "aufc"}`` (floats in ``[0, 1]``) of every trust score for the
    predictions ``preds`` against ``labels``."""
    correct = preds == labels
    return {
        name: {
            "auac": float(auac(s, correct, num_points=num_points)),
            "aufc": float(aufc(s, preds, labels, num_classes, num_points=num_points)),
        }
        for name, s in scores.items()
    }


def format_trust_table(table: Mapping[str, Mapping[str, float]], digits: int = 2) -> str:
    """Markdown of a ``trust_table``: one row per score, AUAC and AUFC in percent."""
    rows = [
        [name] + [f"{100 * values[m]:.{digits}f}" for m in TRUST_METRICS]
        for name, values in table.items()
    ]
    note = "Area under the accuracy (AUAC) and macro-F1 (AUFC) curves, in %; higher is better."
    return note + "\n\n" + _markdown(["score", "AUAC", "AUFC"], rows)
