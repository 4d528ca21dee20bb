"""A low-rank bilinear first layer for the introspective head, on rank-one gradient factors."""

from __future__ import annotations

import torch
from torch import nn

from introspect.gradients.factors import GradientFactors


class LowRankBilinear(nn.Module):
    """A first layer of rank ``r`` on factors: output ``k = Σ_r (a_krᵀ g)(b_krᵀ [h, 1]) · scale
    + c_k``, with ``k·r·(Q·N + D)`` weights instead of ``k·F``.

    ``g`` is the flattened ``(Q·N)`` gradient stack (``blocks = Q`` targets of ``classes = N``
    values), and ``[h, 1]`` carries the bias column when ``include_bias``. ``dense_weight`` is
    the equivalent ``k x F`` weight; a ``(B, F)`` feature tensor is taken through it (the
    reference path).
    """

    def __init__(
        self,
        blocks: int,
        classes: int,
        inputs: int,
        out_features: int,
        rank: int,
        *,
        include_bias: bool = False,
    ) -> None:
        super().__init__()
        if min(blocks, classes, inputs, out_features, rank) < 1:
            raise ValueError(
                f"blocks, classes, inputs, out_features and rank must be positive, got "
                f"{(blocks, classes, inputs, out_features, rank)}"
            )
        self.blocks, self.classes, self.inputs, self.rank = blocks, classes, inputs, rank
        self.include_bias = include_bias
        width = inputs + (1 if include_bias else 0)
        features = blocks * classes * width
        # Each dense entry sums r products of two N(0, s²) draws: variance r·s⁴ = 1 / (3F),
        # the variance of nn.Linear's default uniform initialization.
        std = (3.0 * features * rank) ** -0.25
        self.a = nn.Parameter(torch.randn(out_features, rank, blocks * classes) * std)
        self.b = nn.Parameter(torch.randn(out_features, rank, width) * std)
        bound = features**-0.5
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))

    @property
    def out_features(self) -> int:
        """Number of outputs ``k``."""
        return self.a.shape[0]

    def dense_weight(self) -> torch.Tensor:
        """The ``k x F`` weight, in ``extract``'s row layout, that this layer equals."""
        k, q, n, d = self.out_features, self.blocks, self.classes, self.inputs
        full = torch.einsum("krm,kre->kme", self.a, self.b)  # (k, Q·N, D [+1])
        if not self.include_bias:
            return full.reshape(k, -1)
        per_block = full.view(k, q, n, d + 1)
        weight_part = per_block[..., :d].reshape(k, q, n * d)
        return torch.cat([weight_part, per_block[..., d]], dim=2).reshape(k, -1)

    def forward(self, x: GradientFactors | torch.Tensor) -> torch.Tensor:
        """``(B, k)`` outputs of factors, or of materialized ``(B, F)`` features."""
        if isinstance(x, torch.Tensor):
            return nn.functional.linear(x, self.dense_weight(), self.bias)
        batch, (k, r) = len(x), (self.out_features, self.rank)
        g = x.g.reshape(batch, -1).to(self.a.dtype)
        if g.shape[1] != self.blocks * self.classes or x.h.shape[1] != self.inputs:
            raise ValueError(
                f"the layer takes g of {self.blocks * self.classes} and h of {self.inputs} "
                f"values, got {g.shape[1]} and {x.h.shape[1]}; build the head for this recipe"
            )
        if x.include_bias != self.include_bias:
            raise ValueError("the factors and the layer disagree on include_bias")
        if x.standardizer is not None:
            raise ValueError(
                "a low-rank first layer does not fold standardization; use normalize l2 or none"
            )
        ga = g @ self.a.reshape(k * r, -1).T
        hb = x.h.to(self.b.dtype) @ self.b[..., : self.inputs].reshape(k * r, -1).T
        if self.include_bias:
            hb = hb + self.b[..., self.inputs].reshape(k * r)
        out = (ga * hb).view(batch, k, r).sum(2)
        return out * x.scale[:, None].to(out.dtype) + self.bias
