"""Out-of-distribution detection and trust metrics of confidence scores (docs/guides/scores.md).

Scores are confidences: higher means more in-distribution / more trustworthy. In the detection
metrics **in-distribution samples are the positive class** and a sample is predicted positive
when its score is at or above the threshold; thresholds range over the distinct scores, so tied
scores move together (as in scikit-learn's ``roc_curve``). Results are 0-dim float64 tensors.

The trust metrics (GradTrust evaluation) sort samples by score and follow accuracy (AUAC) or
macro F1 (AUFC) of the samples at or above each percentile of the scores.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from introspect.metrics.calibration import gather_float64

F64 = torch.float64


def _check_scores(scores: torch.Tensor, name: str, allow_empty: bool = False) -> torch.Tensor:
    """``scores`` as a float64 1-D tensor, or ``ValueError``/``TypeError`` naming the problem."""
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor, got {type(scores).__name__}")
    if scores.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one score per sample), got {tuple(scores.shape)}")
    if scores.numel() == 0 and not allow_empty:
        raise ValueError(f"{name} is empty; the metric needs at least one sample")
    if scores.is_complex() or scores.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got dtype {scores.dtype}")
    scores = scores.detach().to(F64)
    if torch.isnan(scores).any():
        raise ValueError(f"{name} contains NaN; drop or fix those samples first")
    return scores


def _roc_counts(
    scores_in: torch.Tensor, scores_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """True and false positive counts at every distinct threshold, highest first, starting with
    the empty selection ``(0, 0)``; plus the numbers of in- and out-of-distribution samples."""
    s_in = _check_scores(scores_in, "scores_in")
    s_out = _check_scores(scores_out, "scores_out").to(s_in.device)
    scores = torch.cat([s_in, s_out])
    positive = torch.cat([torch.ones_like(s_in), torch.zeros_like(s_out)])
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_scores, positive = scores[order], positive[order]
    last_of_tie = torch.ones_like(sorted_scores, dtype=torch.bool)
    last_of_tie[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    zero = positive.new_zeros(1)
    tp = torch.cat([zero, positive.cumsum(0)[last_of_tie]])
    fp = torch.cat([zero, (1 - positive).cumsum(0)[last_of_tie]])
    return tp, fp, s_in.numel(), s_out.numel()


def roc_curve(
    scores_in: torch.Tensor, scores_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fpr, tpr)`` at every distinct threshold, in-distribution = positive; starts at
    ``(0, 0)`` and ends at ``(1, 1)`` (scikit-learn's ``roc_curve`` with
    ``drop_intermediate=False``)."""
    tp, fp, n_in, n_out = _roc_counts(scores_in, scores_out)
    return fp / n_out, tp / n_in


def auroc(scores_in: torch.Tensor, scores_out: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve, in-distribution = positive (ties count one half)."""
    fpr, tpr = roc_curve(scores_in, scores_out)
    return torch.trapezoid(tpr, fpr)


def _average_precision(positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Average precision ``sum_k (R_k - R_{k-1}) P_k`` over the distinct thresholds of the
    scores, ``positives`` being the positive class (scikit-learn's ``average_precision_score``)."""
    tp, fp, n_pos, _ = _roc_counts(positives, negatives)
    precision = tp[1:] / (tp[1:] + fp[1:])
    recall_steps = (tp[1:] - tp[:-1]) / n_pos
    return (recall_steps * precision).sum()


def aupr_in(scores_in: torch.Tensor, scores_out: torch.Tensor) -> torch.Tensor:
    """Area under the precision-recall curve (average precision) with in-distribution samples as
    the positive class, detected by high scores."""
    return _average_precision(scores_in, scores_out)


def aupr_out(scores_in: torch.Tensor, scores_out: torch.Tensor) -> torch.Tensor:
    """Average precision with out-of-distribution samples as the positive class, detected by low
    scores (the roles of ``aupr_in`` swapped; every other metric here has in-distribution as the
    positive class)."""
    s_in = _check_scores(scores_in, "scores_in")
    s_out = _check_scores(scores_out, "scores_out")
    return _average_precision(-s_out, -s_in)


def fpr_at_tpr(
    scores_in: torch.Tensor, scores_out: torch.Tensor, tpr: float = 0.95
) -> torch.Tensor:
    """False positive rate at the highest threshold whose true positive rate is at least
    ``tpr``, in-distribution = positive: the fraction of out-of-distribution samples scored at or
    above the threshold that keeps ``tpr`` of the in-distribution samples (no interpolation)."""
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must lie in (0, 1], got {tpr}")
    fpr_curve, tpr_curve = roc_curve(scores_in, scores_out)
    first = int(torch.nonzero(tpr_curve >= tpr)[0, 0])
    return fpr_curve[first]


def fpr95_ood(scores_in: torch.Tensor, scores_out: torch.Tensor) -> torch.Tensor:
    """FPR95 with in-distribution as the positive class: the fraction of out-of-distribution
    samples accepted at the threshold that keeps 95 % of the in-distribution samples."""
    return fpr_at_tpr(scores_in, scores_out, 0.95)


def fpr95_id(scores_in: torch.Tensor, scores_out: torch.Tensor) -> torch.Tensor:
    """FPR95 with out-of-distribution as the positive class (pytorch-ood's and OpenOOD's
    convention): the fraction of in-distribution samples rejected at the threshold that rejects
    95 % of the out-of-distribution samples."""
    s_in = _check_scores(scores_in, "scores_in")
    s_out = _check_scores(scores_out, "scores_out")
    return fpr_at_tpr(-s_out, -s_in, 0.95)


def detection_error(scores_in: torch.Tensor, scores_out: torch.Tensor) -> torch.Tensor:
    """Minimum over thresholds of ``0.5 (1 - TPR) + 0.5 FPR``, in-distribution = positive
    (equal priors; the empty and the full selection, both 0.5, are among the thresholds)."""
    fpr_curve, tpr_curve = roc_curve(scores_in, scores_out)
    return (0.5 * (1 - tpr_curve) + 0.5 * fpr_curve).min()


def ood_metrics(scores_in: torch.Tensor, scores_out: torch.Tensor) -> dict[str, torch.Tensor]:
    """``auroc``, ``aupr_in``, ``aupr_out``, ``fpr95_ood`` (FPR of OOD at 95 % ID recall),
    ``fpr95_id`` (FPR of ID at 95 % OOD recall) and ``detection_error``, in-distribution =
    positive (``aupr_out`` and ``fpr95_id`` swap the roles, see their docstrings)."""
    return {
        "auroc": auroc(scores_in, scores_out),
        "aupr_in": aupr_in(scores_in, scores_out),
        "aupr_out": aupr_out(scores_in, scores_out),
        "fpr95_ood": fpr95_ood(scores_in, scores_out),
        "fpr95_id": fpr95_id(scores_in, scores_out),
        "detection_error": detection_error(scores_in, scores_out),
    }


# ---------------------------------------------------------------- trust metrics (AUAC, AUFC)

TRUST_CURVES = ("accuracy", "f1")


def _check_labels(values: torch.Tensor, n: int, name: str) -> torch.Tensor:
    """``values`` as an int64 tensor of ``n`` entries, or ``ValueError``/``TypeError``."""
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor, got {type(values).__name__}")
    if values.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) like scores, got {tuple(values.shape)}")
    if values.is_floating_point() or values.is_complex():
        raise TypeError(f"{name} must hold integer class indices, got dtype {values.dtype}")
    return values.detach().long()


def percentile_grid(num_points: int = 100) -> torch.Tensor:
    """The percentiles ``100 k / num_points`` for ``k = 0 .. num_points - 1`` (0, 1, ..., 99)."""
    if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 2:
        raise ValueError(f"num_points must be an integer >= 2, got {num_points!r}")
    return torch.arange(num_points, dtype=F64) * (100.0 / num_points)


def _selection_levels(scores: torch.Tensor, num_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The percentile grid, and per sample the number of percentile thresholds at or below its
    score: sample ``i`` is selected at grid point ``k`` iff ``k < level_i``.

    Thresholds are the percentiles of ``scores`` with linear interpolation (``numpy.percentile``'s
    default), so sample ``i`` is selected at percentile ``p`` iff its score is at least the
    ``p``-th percentile.
    """
    grid = percentile_grid(num_points).to(scores.device)
    ordered = scores.sort().values
    position = grid / 100.0 * (scores.numel() - 1)
    lower = position.floor().long()
    upper = position.ceil().long()
    thresholds = torch.lerp(ordered[lower], ordered[upper], position - lower)
    return grid, torch.searchsorted(thresholds, scores, right=True)


def _selected_counts(
    levels: torch.Tensor, classes: torch.Tensor, num_points: int, num_classes: int
) -> torch.Tensor:
    """Per grid point and class, the number of selected samples of that class (``classes``, one
    per sample with the same ``levels``): ``(num_points, num_classes)`` float64."""
    flat = levels * num_classes + classes
    per_level = torch.bincount(flat, minlength=(num_points + 1) * num_classes)
    at_or_above = per_level.view(num_points + 1, num_classes).flip(0).cumsum(0).flip(0)
    return at_or_above[1:].to(F64)


def _accuracy_curve(
    s: torch.Tensor, correct: torch.Tensor, num_points: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile grid and accuracy of the selected samples (float64 scores ``s``)."""
    grid, levels = _selection_levels(s, num_points)
    zeros = torch.zeros_like(levels)
    total = _selected_counts(levels, zeros, num_points, 1)
    right = _selected_counts(levels[correct], zeros[correct], num_points, 1)
    return grid, (right / total)[:, 0]


def trust_curve(
    scores: torch.Tensor,
    preds: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int | None = None,
    *,
    metric: str = "accuracy",
    num_points: int = 100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(percentiles, values)``: for each percentile ``p`` of ``percentile_grid(num_points)``,
    the accuracy (``metric="accuracy"``) or macro F1 (``metric="f1"``) of ``preds`` against
    ``labels`` over the samples whose trust score is at or above the ``p``-th percentile.

    Macro F1 averages the per-class F1 over the classes that occur among the selected samples'
    labels or predictions (scikit-learn's ``f1_score(average="macro")``); it needs
    ``num_classes`` (predictions and labels in ``[0, num_classes)``).
    """
    s = _check_scores(scores, "scores")
    p = _check_labels(preds, s.numel(), "preds").to(s.device)
    y = _check_labels(labels, s.numel(), "labels").to(s.device)
    if metric == "accuracy":
        return _accuracy_curve(s, p == y, num_points)
    if metric != "f1":
        raise ValueError(f"metric must be one of {TRUST_CURVES}, got {metric!r}")
    if num_classes is None or num_classes < 1:
        raise ValueError(f"metric='f1' needs num_classes >= 1, got {num_classes!r}")
    if min(int(p.min()), int(y.min())) < 0 or max(int(p.max()), int(y.max())) >= num_classes:
        raise ValueError(f"preds and labels must lie in [0, {num_classes})")
    grid, levels = _selection_levels(s, num_points)
    correct = p == y
    true_pos = _selected_counts(levels[correct], y[correct], num_points, num_classes)
    pred_plus_label = _selected_counts(levels, p, num_points, num_classes) + _selected_counts(
        levels, y, num_points, num_classes
    )
    present = pred_plus_label > 0
    f1 = torch.where(present, 2 * true_pos / pred_plus_label.clamp_min(1), 0.0)
    return grid, f1.sum(1) / present.sum(1)


def area_under_trust_curve(percentiles: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Trapezoidal area under a trust curve divided by the percentile range, so it lies in the
    range of ``values`` (``[0, 1]`` for accuracy and F1)."""
    return torch.trapezoid(values, percentiles) / (percentiles[-1] - percentiles[0])


def auac(scores: torch.Tensor, correct: torch.Tensor, *, num_points: int = 100) -> torch.Tensor:
    """Area under the accuracy curve of a trust score: ``correct`` (bool, one per sample) says
    whether each prediction was right; see ``trust_curve``. In ``[0, 1]``, higher is better."""
    s = _check_scores(scores, "scores")
    if not isinstance(correct, torch.Tensor) or correct.dtype != torch.bool:
        raise TypeError("correct must be a bool tensor (preds == labels)")
    if correct.shape != s.shape:
        raise ValueError(f"correct has shape {tuple(correct.shape)}, scores {tuple(s.shape)}")
    return area_under_trust_curve(*_accuracy_curve(s, correct.to(s.device), num_points))


def aufc(
    scores: torch.Tensor,
    preds: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    num_points: int = 100,
) -> torch.Tensor:
    """Area under the macro-F1 curve of a trust score (see ``trust_curve``). In ``[0, 1]``,
    higher is better."""
    return area_under_trust_curve(
        *trust_curve(scores, preds, labels, num_classes, metric="f1", num_points=num_points)
    )


# ---------------------------------------------------------------- streaming (DDP) versions


class OODMetrics(Metric):
    """Streaming ``ood_metrics``: ``update(scores, is_in)`` with ``is_in`` a bool tensor
    (True = in-distribution, the positive class); ``compute()`` returns the dict of
    ``ood_metrics``. Scores are concatenated across updates and processes (states are float64,
    so a process that saw no sample synchronizes too)."""

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("dist_sync_fn", gather_float64)
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("is_in", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, is_in: torch.Tensor) -> None:
        """Add a batch of scores and their in-distribution flags (an empty batch is fine)."""
        s = _check_scores(scores, "scores", allow_empty=True)
        if not isinstance(is_in, torch.Tensor) or is_in.dtype != torch.bool:
            raise TypeError("is_in must be a bool tensor (True = in-distribution)")
        if is_in.shape != s.shape:
            raise ValueError(f"is_in has shape {tuple(is_in.shape)}, scores {tuple(s.shape)}")
        self.scores.append(s.double())
        self.is_in.append(is_in.to(s.device, torch.float64))

    def compute(self) -> dict[str, torch.Tensor]:
        """The metrics of ``ood_metrics`` on everything seen."""
        scores, is_in = dim_zero_cat(self.scores), dim_zero_cat(self.is_in).bool()
        return ood_metrics(scores[is_in], scores[~is_in])


class TrustMetrics(Metric):
    """Streaming ``auac`` and ``aufc``: ``update(scores, preds, labels)``; ``compute()`` returns
    ``{"auac", "aufc"}``. Everything is concatenated across updates and processes (as float64,
    so a process that saw no sample synchronizes too)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, *, num_points: int = 100, **kwargs: Any) -> None:
        kwargs.setdefault("dist_sync_fn", gather_float64)
        super().__init__(**kwargs)
        percentile_grid(num_points)  # validates num_points
        self.num_classes = num_classes
        self.num_points = num_points
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, preds: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch of trust scores, predicted classes and true classes (may be empty)."""
        s = _check_scores(scores, "scores", allow_empty=True)
        self.scores.append(s.double())
        self.preds.append(_check_labels(preds, s.numel(), "preds").to(s.device, torch.float64))
        self.labels.append(_check_labels(labels, s.numel(), "labels").to(s.device, torch.float64))

    def compute(self) -> dict[str, torch.Tensor]:
        """``auac`` and ``aufc`` on everything seen."""
        scores = dim_zero_cat(self.scores)
        preds, labels = dim_zero_cat(self.preds).long(), dim_zero_cat(self.labels).long()
        return {
            "auac": auac(scores, preds == labels, num_points=self.num_points),
            "aufc": aufc(scores, preds, labels, self.num_classes, num_points=self.num_points),
        }
