"""Post-hoc detectors that reshape the logits, activations or weights of the final layer:
GEN, ReAct, ASH and DICE (``detect.posthoc``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from introspect.detect.posthoc_base import FeatureSource, Fitted, PosthocDetector, energy, quantile


class GEN(PosthocDetector):
    """GEN (Liu et al. 2023): ``-sum_j p_j^gamma (1 - p_j)^gamma`` over the ``M`` largest softmax
    probabilities (default all)."""

    needs_fit = False

    def __init__(self, source: FeatureSource, *, gamma: float = 0.1, M: int | None = None):
        super().__init__(source)
        if gamma <= 0 or (M is not None and M < 1):
            raise ValueError(f"GEN needs gamma > 0 and M >= 1, got gamma={gamma}, M={M}")
        self.gamma, self.M = gamma, M

    def score_features(
        self, z: torch.Tensor, logits: torch.Tensor, linear: nn.Linear
    ) -> torch.Tensor:
        p = logits.softmax(1)
        if self.M is not None:
            p = p.topk(min(self.M, p.shape[1]), dim=1).values
        return -(p.pow(self.gamma) * (1 - p).pow(self.gamma)).sum(1)


class ReAct(PosthocDetector):
    """ReAct (Sun et al. 2021): energy of the logits of features clipped at the ``percentile``
    quantile of all in-distribution training activations."""

    def __init__(self, source: FeatureSource, *, percentile: float = 0.9) -> None:
        super().__init__(source)
        self.percentile = percentile
        self.threshold: float | None = None

    def _fit(self, data: Fitted) -> None:
        self.threshold = quantile(data.z, self.percentile)

    def score_features(
        self, z: torch.Tensor, logits: torch.Tensor, linear: nn.Linear
    ) -> torch.Tensor:
        assert self.threshold is not None
        return energy(linear(z.clamp(max=self.threshold)))


class ASH(PosthocDetector):
    """ASH (Djurisic et al. 2023) on the final features: keep each row's largest
    ``1 - percentile`` fraction of values, zero the rest, then ``variant`` ``"p"`` (prune only),
    ``"b"`` (kept values set to the row's sum over their count) or ``"s"`` (kept values scaled
    by ``exp(sum before / sum after)``); the score is the energy of the resulting logits."""

    needs_fit = False

    def __init__(
        self, source: FeatureSource, *, variant: str = "s", percentile: float = 0.65
    ) -> None:
        super().__init__(source)
        if variant not in ("p", "b", "s"):
            raise ValueError(f"ASH variant must be p, b or s, got {variant!r}")
        if not 0.0 <= percentile < 1.0:
            raise ValueError(f"ASH percentile must lie in [0, 1), got {percentile}")
        self.variant, self.percentile = variant, percentile

    def shape(self, z: torch.Tensor) -> torch.Tensor:
        """The shaped features ``(B, D)``."""
        d = z.shape[1]
        keep = d - round(d * self.percentile)
        values, index = z.topk(keep, dim=1)
        if self.variant == "b":
            values = (z.sum(1, keepdim=True) / keep).expand_as(values)
        pruned = torch.zeros_like(z).scatter_(1, index, values)
        if self.variant == "s":
            pruned = pruned * torch.exp(z.sum(1, keepdim=True) / pruned.sum(1, keepdim=True))
        return pruned

    def score_features(
        self, z: torch.Tensor, logits: torch.Tensor, linear: nn.Linear
    ) -> torch.Tensor:
        return energy(linear(self.shape(z)))


class DICE(PosthocDetector):
    """DICE (Sun & Li 2022): energy of the logits through the final weights sparsified to the
    entries whose in-distribution mean contribution ``mean(z)_j W_cj`` lies above its ``p``
    quantile."""

    def __init__(self, source: FeatureSource, *, p: float = 0.9) -> None:
        super().__init__(source)
        self.p = p
        self.weight: torch.Tensor | None = None

    def _fit(self, data: Fitted) -> None:
        w = data.linear.weight.detach()
        contribution = data.z.mean(0)[None, :] * w
        self.weight = torch.where(contribution > quantile(contribution, self.p), w, 0)

    def score_features(
        self, z: torch.Tensor, logits: torch.Tensor, linear: nn.Linear
    ) -> torch.Tensor:
        assert self.weight is not None
        return energy(F.linear(z, self.weight, linear.bias))
