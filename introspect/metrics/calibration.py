"""Calibration and proper-scoring metrics as torchmetrics ``Metric`` subclasses.

Every metric takes ``update(probs, target)``: ``probs`` a ``(B, N)`` tensor of class probabilities
(rows sum to 1; apply ``softmax`` to logits first) and ``target`` a ``(B,)`` integer tensor of class
indices. States are registered with ``dist_reduce_fx`` ``"sum"`` or ``"cat"``, so values are
synchronized across DDP processes.

Confidence is the maximum probability of a row, the prediction its argmax (first index on ties,
as ``torch.max``). Equal-width binning follows docs/concepts.md: ``n_bins`` bins with float64 edges
``e_b = linspace(0, 1, n_bins + 1)[b]``; bin ``b`` is the right-closed interval ``(e_b, e_{b+1}]``,
so the bins cover ``(0, 1]`` and a confidence of exactly 1 falls in the last bin. (torchmetrics'
``MulticlassCalibrationError`` uses left-closed bins ``[e_b, e_{b+1})`` plus an extra bin for a
confidence of exactly 1; the two agree unless a confidence lies exactly on an edge.)

Sums are accumulated in float64 and counts in int64, so results do not depend on batching.
``compute`` before any sample was seen returns NaN (the metric is undefined on no data).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

NLL_EPS = 1e-12


def check_n_bins(n_bins: int) -> int:
    """``n_bins`` if it is a positive integer, else ``ValueError``."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return n_bins


def validate_probs_target(
    probs: torch.Tensor, target: torch.Tensor, num_classes: int | None = None
) -> None:
    """Raise ``ValueError``/``TypeError`` unless ``probs`` (B, N) and ``target`` (B,) are valid.

    ``probs`` must be floating point, finite, in ``[0, 1]`` with rows summing to 1 (tolerance
    ``max(1e-3, 2·N·eps(dtype))``); ``target`` must hold integers in ``[0, N)``; ``N`` must equal
    ``num_classes`` when that is given.
    """
    if not isinstance(probs, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError(
            f"probs and target must be torch tensors, got {type(probs).__name__} and "
            f"{type(target).__name__}"
        )
    if probs.ndim != 2:
        raise ValueError(
            f"probs must have shape (batch, num_classes), got {tuple(probs.shape)}; "
            "flatten extra dimensions first"
        )
    if target.ndim != 1:
        raise ValueError(
            f"target must have shape (batch,) of class indices, got {tuple(target.shape)}; "
            "pass indices, not one-hot rows"
        )
    batch, n = probs.shape
    if target.shape[0] != batch:
        raise ValueError(f"probs has {batch} rows but target has {target.shape[0]} entries")
    if num_classes is not None and n != num_classes:
        raise ValueError(
            f"probs has {n} classes but the metric expects num_classes={num_classes}; "
            "pass probabilities over all classes"
        )
    if not probs.is_floating_point():
        raise TypeError(f"probs must be a floating-point tensor, got dtype {probs.dtype}")
    if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
        raise TypeError(
            f"target must be an integer tensor of class indices, got dtype {target.dtype}; "
            "cast with .long()"
        )
    if batch == 0:
        return
    if not torch.isfinite(probs).all():
        raise ValueError("probs contains NaN or infinite values")
    if probs.min() < 0 or probs.max() > 1:
        raise ValueError(
            f"probs must lie in [0, 1], got values in [{probs.min().item():.4g}, "
            f"{probs.max().item():.4g}]; apply softmax to logits first"
        )
    tol = max(1e-3, 2 * n * torch.finfo(probs.dtype).eps)
    row_error = (probs.double().sum(dim=1) - 1).abs().max().item()
    if row_error > tol:
        raise ValueError(
            f"rows of probs must sum to 1 (largest deviation {row_error:.3g} > {tol:.3g}); "
            "apply softmax to logits first"
        )
    if target.min() < 0 or target.max() >= n:
        raise ValueError(
            f"target must hold class indices in [0, {n}), got values in "
            f"[{target.min().item()}, {target.max().item()}]"
        )


def confidence_and_correct(
    probs: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 top-1 confidence and float64 0/1 correctness of each row."""
    confidence, prediction = probs.max(dim=1)
    return confidence.double(), (prediction == target).double()


def equal_width_bin_index(confidence: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Bin of each confidence in ``(0, 1]``: ``b`` such that ``e_b < c <= e_{b+1}``."""
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64, device=confidence.device)
    # right=False gives the number of edges strictly below c, i.e. b + 1; clamp maps c <= 0
    # (impossible for a top-1 probability) into the first bin rather than dropping it.
    index = torch.bucketize(confidence.double(), edges, right=False) - 1
    return index.clamp(0, n_bins - 1)


class _ProbsTargetMetric(Metric):
    """Shared argument checks: ``update(probs, target)`` with a fixed number of classes."""

    is_differentiable = False
    full_state_update = False

    def __init__(
        self, *, num_classes: int | None = None, validate_args: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
        ):
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self._num_classes_arg = num_classes
        self.num_classes = num_classes
        self.validate_args = validate_args

    def reset(self) -> None:
        """Forget all samples (and a class count inferred from the first batch)."""
        super().reset()
        self.num_classes = self._num_classes_arg

    def _check(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        """Validate inputs; without an explicit ``num_classes`` the first batch fixes it."""
        if self.validate_args:
            validate_probs_target(probs, target, self.num_classes)
        if self.num_classes is None and probs.ndim == 2:
            self.num_classes = int(probs.shape[1])

    def _nan(self) -> torch.Tensor:
        return torch.tensor(math.nan, dtype=torch.get_default_dtype(), device=self.device)


class _EqualWidthBinned(_ProbsTargetMetric):
    """Per-bin sample count, summed confidence and summed correctness over equal-width bins."""

    higher_is_better = False

    def __init__(self, n_bins: int = 15, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_bins = check_n_bins(n_bins)
        self.add_state("count", torch.zeros(n_bins, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state(
            "confidence_sum", torch.zeros(n_bins, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state(
            "correct_sum", torch.zeros(n_bins, dtype=torch.float64), dist_reduce_fx="sum"
        )

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of ``(B, N)`` probabilities and ``(B,)`` class indices."""
        self._check(probs, target)
        confidence, correct = confidence_and_correct(probs.detach(), target)
        index = equal_width_bin_index(confidence, self.n_bins)
        self.count.index_add_(0, index, torch.ones_like(index))
        self.confidence_sum.index_add_(0, index, confidence)
        self.correct_sum.index_add_(0, index, correct)

    def bin_sums(self) -> dict[str, torch.Tensor]:
        """Per-bin ``count``, ``confidence_sum`` and ``correct_sum`` of all samples seen, summed
        over the processes of a distributed run (on the CPU)."""
        with self.sync_context():
            return {
                k: getattr(self, k).detach().cpu().clone()
                for k in ("count", "confidence_sum", "correct_sum")
            }


class ExpectedCalibrationError(_EqualWidthBinned):
    """ECE: ``Σ_b |B_b|/n · |acc(B_b) − conf(B_b)|`` over equal-width confidence bins.

    A fraction in ``[0, 1]``; lower is better. Streaming: keeps only per-bin sums.
    """

    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def compute(self) -> torch.Tensor:
        """The expected calibration error of all samples seen."""
        n = self.count.sum()
        if n == 0:
            return self._nan()
        ece = (self.correct_sum - self.confidence_sum).abs().sum() / n
        return ece.to(torch.get_default_dtype())


class MaxCalibrationError(_EqualWidthBinned):
    """MCE: ``max_b |acc(B_b) − conf(B_b)|`` over the non-empty equal-width confidence bins.

    A fraction in ``[0, 1]``; lower is better.
    """

    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def compute(self) -> torch.Tensor:
        """The maximum calibration error of all samples seen."""
        filled = self.count > 0
        if not filled.any():
            return self._nan()
        gap = (self.correct_sum[filled] - self.confidence_sum[filled]).abs() / self.count[filled]
        return gap.max().to(torch.get_default_dtype())


def gather_float64(state: torch.Tensor, group: Any | None = None) -> list[torch.Tensor]:
    """Gather a float64 state from every process (a ``dist_sync_fn`` for "cat" states). A
    process that saw no sample sends an empty placeholder in the metric's default dtype; it must
    match the others' bytes, so every state is cast to float64."""
    return gather_all_tensors(state.double(), group=group)


class AdaptiveCalibrationError(_ProbsTargetMetric):
    """Adaptive ECE: ECE over ``n_bins`` equal-mass bins instead of equal-width ones.

    Samples are sorted by confidence and split into ``n_bins`` consecutive groups whose sizes
    differ by at most one; with ``n = q·n_bins + r`` the first ``r`` groups (lowest confidence)
    hold ``q + 1`` samples and the rest ``q``. With fewer samples than bins, the empty groups
    contribute nothing. Ties in confidence are ordered wrong-before-correct, so the result
    depends only on the multiset of ``(confidence, correct)`` pairs, not on sample order or on
    how samples were split across batches or processes. Keeps all confidences (``"cat"`` states).
    A fraction in ``[0, 1]``; lower is better.
    """

    higher_is_better = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def __init__(self, n_bins: int = 15, **kwargs: Any) -> None:
        kwargs.setdefault("dist_sync_fn", gather_float64)
        super().__init__(**kwargs)
        self.n_bins = check_n_bins(n_bins)
        self.add_state("confidence", [], dist_reduce_fx="cat")
        self.add_state("correct", [], dist_reduce_fx="cat")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of ``(B, N)`` probabilities and ``(B,)`` class indices."""
        self._check(probs, target)
        confidence, correct = confidence_and_correct(probs.detach(), target)
        self.confidence.append(confidence)
        self.correct.append(correct)

    def compute(self) -> torch.Tensor:
        """The adaptive calibration error of all samples seen."""
        # After a DDP sync the "cat" states are tensors, before it lists of batch tensors.
        if isinstance(self.confidence, list) and len(self.confidence) == 0:
            return self._nan()
        confidence = dim_zero_cat(self.confidence)
        correct = dim_zero_cat(self.correct)
        n = confidence.numel()
        if n == 0:
            return self._nan()
        # Lexicographic order by (confidence, correct): stable sort on the secondary key first.
        order = torch.argsort(correct, stable=True)
        order = order[torch.argsort(confidence[order], stable=True)]
        q, r = divmod(n, self.n_bins)
        sizes = torch.full((self.n_bins,), q, dtype=torch.int64, device=confidence.device)
        sizes[:r] += 1
        group = torch.repeat_interleave(
            torch.arange(self.n_bins, device=confidence.device), sizes, output_size=n
        )
        gap = torch.zeros(self.n_bins, dtype=torch.float64, device=confidence.device)
        gap.index_add_(0, group, correct[order] - confidence[order])
        return (gap.abs().sum() / n).to(torch.get_default_dtype())


class NegativeLogLikelihood(_ProbsTargetMetric):
    """Mean ``−log p_target``, with ``p_target`` clamped below at ``eps`` (default ``1e-12``).

    The clamp bounds one sample's loss by ``−log eps`` (≈ 27.6 nats by default) instead of letting
    a single zero probability make the mean infinite. In nats; lower is better; unbounded above.
    """

    higher_is_better = False
    plot_lower_bound = 0.0

    def __init__(self, eps: float = NLL_EPS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0 < eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        self.eps = float(eps)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of ``(B, N)`` probabilities and ``(B,)`` class indices."""
        self._check(probs, target)
        p_target = probs.detach().gather(1, target.long().unsqueeze(1)).squeeze(1).double()
        self.total += -p_target.clamp_min(self.eps).log().sum()
        self.count += target.numel()

    def compute(self) -> torch.Tensor:
        """The mean negative log-likelihood of all samples seen."""
        if self.count == 0:
            return self._nan()
        return (self.total / self.count).to(torch.get_default_dtype())


class BrierScore(_ProbsTargetMetric):
    """Multi-class Brier score: mean over samples of ``Σ_c (p_c − onehot(target)_c)²``.

    This is the original multi-class definition (Brier 1950), summed over classes, so it lies in
    ``[0, 2]`` (not the binary top-label variant in ``[0, 1]``); lower is better.
    """

    higher_is_better = False
    plot_lower_bound = 0.0
    plot_upper_bound = 2.0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of ``(B, N)`` probabilities and ``(B,)`` class indices."""
        self._check(probs, target)
        p = probs.detach().double()
        p_target = p.gather(1, target.long().unsqueeze(1)).squeeze(1)
        # Σ_c (p_c − y_c)² = Σ_c p_c² − 2 p_target + 1 for a one-hot y.
        self.total += (p.square().sum(dim=1) - 2 * p_target + 1).sum()
        self.count += target.numel()

    def compute(self) -> torch.Tensor:
        """The mean multi-class Brier score of all samples seen."""
        if self.count == 0:
            return self._nan()
        return (self.total / self.count).to(torch.get_default_dtype())
