"""Rank-one factors of the last-layer gradient feature: ``r_x = scale · [vec(g_q hᵀ) (, g_q)]_q``.

The per-sample gradient of the head weight (``N x D``) is the outer product of the loss
gradient at the head output ``g`` (N values) with the head input ``h`` (D values), so a feature
row of ``extract`` is determined by ``N + D`` numbers (``Q·N + D`` for the ``per_class`` stack,
whose ``g_q = p·Σt - e_q`` follow from the softmax ``p``). ``GradientFactors`` holds them;
``materialize`` rebuilds the ``(B, F)`` rows of ``extract`` for reference and for small cases.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from introspect.gradients.normalize import L2_EPS, Standardizer, check_normalize


@dataclass(frozen=True)
class GradientFactors:
    """Factors of ``B`` last-layer gradient features.

    - ``g``: ``(B, Q, N)`` loss gradients at the head output, one per target (``Q = 1``, or N
      for ``per_class``);
    - ``h``: ``(B, D)`` head inputs;
    - ``scale``: ``(B,)`` per-row factor (``1 / (‖g‖·‖[h, 1]‖)`` for L2 normalization, else 1);
    - ``include_bias``: each class block ``q`` is followed by the bias gradient ``g_q``;
    - ``standardizer``: applied to the materialized rows (``normalize="standardize"``).

    Row ``i`` of ``materialize()`` is ``scale_i · [vec(g_i0 h_iᵀ), (g_i0,) vec(g_i1 h_iᵀ), ...]``
    (standardized when a standardizer is set): the layout of ``extract``.
    """

    g: torch.Tensor
    h: torch.Tensor
    scale: torch.Tensor
    include_bias: bool = False
    standardizer: Standardizer | None = None

    def __post_init__(self) -> None:
        if self.g.ndim != 3 or self.h.ndim != 2 or self.scale.ndim != 1:
            raise ValueError(
                f"factors need g (B, Q, N), h (B, D) and scale (B,); got {tuple(self.g.shape)}, "
                f"{tuple(self.h.shape)} and {tuple(self.scale.shape)}"
            )
        if not self.g.shape[0] == self.h.shape[0] == self.scale.shape[0]:
            raise ValueError(
                f"factors disagree on the batch size: g {self.g.shape[0]}, h {self.h.shape[0]}, "
                f"scale {self.scale.shape[0]}"
            )

    @classmethod
    def from_parts(
        cls,
        g: torch.Tensor,
        h: torch.Tensor,
        *,
        include_bias: bool = False,
        normalize: str = "l2",
        standardizer: Standardizer | None = None,
    ) -> GradientFactors:
        """Factors of unnormalized ``g`` (``(B, Q, N)``) and ``h`` (``(B, D)``), normalized as
        ``extract``'s ``normalize`` (``"l2"`` sets ``scale``; ``"standardize"`` keeps the
        fitted ``standardizer``)."""
        check_normalize(normalize, standardizer)
        if normalize == "l2":
            scale = 1.0 / l2_norms(g, h, include_bias).clamp_min(L2_EPS)
        else:
            scale = torch.ones(g.shape[0], dtype=g.dtype, device=g.device)
        return cls(g, h, scale.to(g.dtype), include_bias, standardizer)

    def __len__(self) -> int:
        return self.g.shape[0]

    @property
    def num_features(self) -> int:
        """Length F of a materialized row."""
        q, n = self.g.shape[1:]
        return q * n * (self.h.shape[1] + (1 if self.include_bias else 0))

    def __getitem__(self, index: torch.Tensor | slice | int) -> GradientFactors:
        """The factors of the rows ``index`` selects (a 1-D index tensor, slice or int)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return GradientFactors(
            self.g[index], self.h[index], self.scale[index], self.include_bias, self.standardizer
        )

    def to(self, *args, **kwargs) -> GradientFactors:
        """The factors moved/cast like ``torch.Tensor.to`` (the standardizer stays as it is)."""
        return GradientFactors(
            self.g.to(*args, **kwargs),
            self.h.to(*args, **kwargs),
            self.scale.to(*args, **kwargs),
            self.include_bias,
            self.standardizer,
        )

    def materialize(self) -> torch.Tensor:
        """The ``(B, F)`` feature rows these factors stand for (``extract``'s output)."""
        batch, q, n = self.g.shape
        g = self.g * self.scale[:, None, None]
        blocks = torch.einsum("bqn,bd->bqnd", g, self.h.to(g.dtype)).reshape(batch, q, -1)
        if self.include_bias:
            blocks = torch.cat([blocks, g], dim=2)
        rows = blocks.reshape(batch, -1)
        return rows if self.standardizer is None else self.standardizer.transform(rows)


def l2_norms(g: torch.Tensor, h: torch.Tensor, include_bias: bool) -> torch.Tensor:
    """``(B,)`` L2 norms of the materialized rows: ``‖g‖_F · ‖h‖`` (``‖[h, 1]‖`` with bias)."""
    h_sq = h.square().sum(1)
    if include_bias:
        h_sq = h_sq + 1
    return g.square().sum((1, 2)).sqrt() * h_sq.sqrt().to(g.dtype)


def fold_standardization(
    weight: torch.Tensor, bias: torch.Tensor | None, mean: torch.Tensor, std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W', b')`` with ``W' x + b' = W (x - mean) / std + b`` for every ``x`` (``W``: k x F)."""
    folded = weight / std.to(weight)
    shift = folded @ mean.to(weight)
    return folded, (-shift if bias is None else bias - shift)


def factor_linear(
    factors: GradientFactors,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
) -> torch.Tensor:
    """``F.linear(z, weight, bias)`` of the standardized rows ``z = (x - mean) / std`` (when
    given) of ``x = factors.materialize()``, without building ``x``: ``(B, k)``.

    ``weight`` is ``k x F``; viewed as ``k x (Q·N) x D`` the product is
    ``Σ_{q,n,d} g_bqn W_kqnd h_bd``, contracted over the smaller of ``Q·N`` and ``D`` last.
    Standardization (``mean``/``std`` and the factors' own standardizer) folds into the weight
    and bias exactly.
    """
    if weight.shape[1] != factors.num_features:
        raise ValueError(
            f"the layer takes {weight.shape[1]} features but the factors stand for "
            f"{factors.num_features}; build the head for this feature recipe"
        )
    if mean is not None and std is not None:
        weight, bias = fold_standardization(weight, bias, mean, std)
    if factors.standardizer is not None:
        s = factors.standardizer
        weight, bias = fold_standardization(weight, bias, s.mean, s.std.clamp_min(s.eps))
    batch, q, n = factors.g.shape
    d, k, m = factors.h.shape[1], weight.shape[0], q * n
    blocks = weight.view(k, q, -1)
    w = blocks[..., : n * d].reshape(k, m, d)
    g = factors.g.reshape(batch, m).to(weight.dtype)
    h = factors.h.to(weight.dtype)
    if m <= d:  # (B, D) x (D, k·m), then the small sum over m
        t = (h @ w.reshape(k * m, d).T).view(batch, k, m)
        out = torch.einsum("bkm,bm->bk", t, g)
    else:  # (B, m) x (m, k·D), then the small sum over D
        t = (g @ w.transpose(0, 1).reshape(m, k * d)).view(batch, k, d)
        out = torch.einsum("bkd,bd->bk", t, h)
    if factors.include_bias:
        out = out + g @ blocks[..., n * d :].reshape(k, m).T
    out = out * factors.scale[:, None].to(out.dtype)
    return out if bias is None else out + bias


def feature_moments(
    factors: GradientFactors, chunk: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and unbiased standard deviation of ``factors.materialize()`` (before
    any standardizer), accumulated in float64 over chunks of rows without materializing them:
    ``(F,)`` each, in the factors' dtype."""
    rows = len(factors)
    if rows < 2:
        raise ValueError(f"feature moments need at least two rows, got {rows}")
    _, q, n = factors.g.shape
    d = factors.h.shape[1]
    first = torch.zeros(q, n, d, dtype=torch.float64, device=factors.g.device)
    second = torch.zeros_like(first)
    first_b = torch.zeros(q, n, dtype=torch.float64, device=factors.g.device)
    second_b = torch.zeros_like(first_b)
    for start in range(0, rows, chunk):
        part = factors[start : start + chunk]
        sg = part.g.double() * part.scale.double()[:, None, None]
        h = part.h.double()
        first += torch.einsum("mqn,md->qnd", sg, h)
        second += torch.einsum("mqn,md->qnd", sg.square(), h.square())
        first_b += sg.sum(0)
        second_b += sg.square().sum(0)
    mean, mean_b = first / rows, first_b / rows
    var = (second / rows - mean.square()).clamp_min(0) * (rows / (rows - 1))
    var_b = (second_b / rows - mean_b.square()).clamp_min(0) * (rows / (rows - 1))
    if factors.include_bias:
        mean = torch.cat([mean.reshape(q, -1), mean_b], dim=1)
        var = torch.cat([var.reshape(q, -1), var_b], dim=1)
    dtype = factors.g.dtype
    return mean.reshape(-1).to(dtype), var.reshape(-1).sqrt().to(dtype)
