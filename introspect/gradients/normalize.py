"""Per-sample normalization of feature rows: none, L2, or standardization with train statistics."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

NORMALIZATIONS = ("none", "l2", "standardize")
L2_EPS = 1e-12


class Standardizer:
    """Streaming per-feature mean and standard deviation, fitted on training features.

    ``transform(x) = (x - mean) / max(std, eps)`` with ``std`` the unbiased sample standard
    deviation (``torch.std`` with ``correction=1``), so at least two rows must have been seen.
    Statistics are accumulated in float64 (Chan et al.'s pairwise update), so the result does not
    depend on how the data were batched.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.eps = float(eps)
        self.reset()

    def reset(self) -> Standardizer:
        """Forget everything seen so far."""
        self.count = 0
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None
        return self

    def update(self, batch: torch.Tensor) -> Standardizer:
        """Add the rows of a ``(B, F)`` batch of features to the statistics."""
        if batch.ndim != 2:
            raise ValueError(
                f"expected a (batch, features) tensor, got shape {tuple(batch.shape)}; "
                "flatten the features first"
            )
        if self._mean is not None and batch.shape[1] != self._mean.numel():
            raise ValueError(
                f"batch has {batch.shape[1]} features but the standardizer was fitted on "
                f"{self._mean.numel()}; use one Standardizer per feature recipe"
            )
        n = batch.shape[0]
        if n == 0:
            return self
        x = batch.detach().to(dtype=torch.float64)
        mean_b = x.mean(0)
        m2_b = (x - mean_b).square().sum(0)
        if self._mean is None or self._m2 is None:
            self._mean, self._m2 = mean_b, m2_b
        else:
            x_mean = self._mean.to(x.device)
            total = self.count + n
            delta = mean_b - x_mean
            self._mean = x_mean + delta * (n / total)
            self._m2 = self._m2.to(x.device) + m2_b + delta.square() * (self.count * n / total)
        self.count += n
        return self

    def fit(self, data: torch.Tensor | Iterable[torch.Tensor | tuple | list]) -> Standardizer:
        """Reset, then accumulate a ``(N, F)`` tensor or an iterable of batches.

        Batches may be tensors or tuples/lists whose first element is the feature tensor
        (as a ``DataLoader`` over ``(features, labels)`` yields them).
        """
        self.reset()
        batches = [data] if isinstance(data, torch.Tensor) else data
        for batch in batches:
            if isinstance(batch, (tuple, list)):
                batch = batch[0]
            if not isinstance(batch, torch.Tensor):
                raise TypeError(
                    f"expected feature tensors (or (features, ...) tuples), got {type(batch)}"
                )
            self.update(batch)
        self._require_fitted()
        return self

    def _require_fitted(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._mean is None or self._m2 is None or self.count < 2:
            raise RuntimeError(
                f"the standardizer has seen {self.count} rows; fit it on at least two rows of "
                "training features (extracted with normalize='none') before transforming"
            )
        return self._mean, self._m2

    @property
    def mean(self) -> torch.Tensor:
        """Per-feature mean, float64."""
        return self._require_fitted()[0]

    @property
    def std(self) -> torch.Tensor:
        """Per-feature unbiased standard deviation, float64 (not clamped)."""
        _, m2 = self._require_fitted()
        return (m2 / (self.count - 1)).sqrt()

    def transform(self, features: torch.Tensor) -> torch.Tensor:
        """``(features - mean) / max(std, eps)`` in the dtype and on the device of ``features``."""
        mean, _ = self._require_fitted()
        if features.shape[-1] != mean.numel():
            raise ValueError(
                f"features have {features.shape[-1]} columns but the standardizer was fitted on "
                f"{mean.numel()}; fit it on features of the same recipe"
            )
        mean = mean.to(device=features.device, dtype=features.dtype)
        std = self.std.clamp_min(self.eps).to(device=features.device, dtype=features.dtype)
        return (features - mean) / std

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The statistics as tensors (loadable with ``torch.load(..., weights_only=True)``)."""
        mean, m2 = self._require_fitted()
        return {
            "count": torch.tensor(self.count, dtype=torch.int64),
            "mean": mean.cpu(),
            "m2": m2.cpu(),
            "eps": torch.tensor(self.eps, dtype=torch.float64),
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> Standardizer:
        """Restore what ``state_dict`` returned."""
        missing = {"count", "mean", "m2", "eps"} - set(state)
        if missing:
            raise KeyError(f"standardizer state lacks {sorted(missing)}")
        if state["mean"].shape != state["m2"].shape or state["mean"].ndim != 1:
            raise ValueError("standardizer state: mean and m2 must be 1-D tensors of equal size")
        self.count = int(state["count"])
        self._mean = state["mean"].to(torch.float64).clone()
        self._m2 = state["m2"].to(torch.float64).clone()
        self.eps = float(state["eps"])
        self._require_fitted()
        return self


def normalize_features(
    features: torch.Tensor, normalize: str, standardizer: Standardizer | None = None
) -> torch.Tensor:
    """Normalize ``(B, F)`` feature rows: ``"none"``, ``"l2"`` (per row, eps-safe) or
    ``"standardize"`` (with a fitted ``standardizer``, which the other modes refuse)."""
    check_normalize(normalize, standardizer)
    if normalize == "l2":
        return features / features.norm(dim=1, keepdim=True).clamp_min(L2_EPS)
    if normalize == "standardize":
        assert standardizer is not None  # guaranteed by check_normalize
        return standardizer.transform(features)
    return features


def check_normalize(normalize: str, standardizer: Standardizer | None) -> None:
    """Raise a ``ValueError`` naming the fix when ``normalize``/``standardizer`` do not fit."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if normalize == "standardize" and standardizer is None:
        raise ValueError(
            "normalize='standardize' needs standardizer=Standardizer().fit(train_features), "
            "with train_features extracted using normalize='none'"
        )
    if normalize != "standardize" and standardizer is not None:
        raise ValueError(
            f"a standardizer was given but normalize={normalize!r}; "
            "pass normalize='standardize' or drop the standardizer"
        )
