"""Post-hoc detectors on the geometry of the final features: KNN, SHE, RMD, NNGuide, fDBD and
ViM (``detect.posthoc``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from introspect.detect.posthoc_base import FeatureSource, Fitted, PosthocDetector, energy


class _NearestNeighbours(PosthocDetector):
    """A detector that compares the features with a bank of ``k`` or more training rows."""

    def __init__(self, source: FeatureSource, *, k: int) -> None:
        super().__init__(source)
        name = type(self).__name__
        if k < 1:
            raise ValueError(f"{name} needs k >= 1, got {k}")
        self.k = k
        self.bank: torch.Tensor | None = None

    def _fit(self, data: Fitted) -> None:
        if len(data.z) < self.k:
            name = type(self).__name__
            raise ValueError(f"{name} with k={self.k} needs at least {self.k} fitting rows")
        self.bank = self._bank(data)

    def _bank(self, data: Fitted) -> torch.Tensor:
        """The ``(n, D)`` rows the test features are compared with."""
        raise NotImplementedError


class KNN(_NearestNeighbours):
    """KNN (Sun et al. 2022): minus the distance from the L2-normalized features to their
    ``k``-th nearest normalized in-distribution training feature."""

    def __init__(self, source: FeatureSource, *, k: int = 50) -> None:
        super().__init__(source, k=k)

    def _bank(self, data: Fitted) -> torch.Tensor:
        return F.normalize(data.z.double(), dim=1)

    def score_features(
        self, z: torch.Tensor, logits: torch.Tensor, linear: nn.Linear
    ) -> torch.Tensor:
        assert self.bank is not None
        cosine = F.normalize(z.double(), dim=1) @ self.bank.T
        kth = cosine.topk(self.k, dim=1).values[:, -1]  # k-th largest similarity = k-th nearest
        return -(2 - 2 * kth).clamp_min(0).sqrt().to(z.dtype)


class SHE(PosthocDetector):
    """SHE (Zhang et al. 2023): inner product of the features with the stored pattern (mean
    feature of the correctly classified training rows) of the predicted class."""

    def __init__(self, source: FeatureSource) -> None:
        super().__init__(source)
        self.patterns: torch.Tensor | None = None

    def _fit(self, data: Fitted) -> None:
        num_classes = data.logits.shape[1]
        correct = data.logits.argmax(1) == data.labels
        z, y = data.z[correct], data.labels[correct]
        counts = torch.bincount(y, minlength=num_classes)
        if (counts == 0).any():
            missing = torch.nonzero(counts == 0).flatten().tolist()
            raise ValueError(f"SHE needs correct predictions of every class; none for {missing}")
        sums = torch.zeros(num_classes, z.shape[1], dtype=z.dtype, device=z.device)
        self.patterns = sums.index_add_(0, y, z) / counts[:, None]

    def score_features(
        self, z: torch.Tensor, logits: torch.Tensor, linear: nn.Linear
    ) -> torch.Tensor:
        assert self.patterns is not None
        return (z * self.patterns[logits.argmax(1)]).sum(1)


class RMD(PosthocDetector):
    """Relative Mahalanobis distance (Ren et al. 2021): minus ``min_k MD_k(z) - MD_0(z)``, the
    class-conditional squared distances (shared covariance) relative to that of one Gaussian of
    all training features; covariances are maximum-likelihood, inverted by pseudo-inverse."""

    def __init__(self, source: FeatureSource) -> None:
        super().__init__(source)
        self.means: torch.Tensor | None = None
        self.precision: torch.Tensor | None = None
        self.background_mean: torch.Tensor | None = None
        self.background_precision: torch.Tensor | None = None

    def _fit(self, data: Fitted) -> None:
        z, y = data.z.double(), data.labels
        num_classes = max(int(y.max()) + 1, data.logits.shape[1])
        counts = torch.bincount(y, minlength=num_classes)
        if (counts == 0).any():
            raise ValueError("RMD needs fitting rows of every class")
        sums = torch.zeros(num_classes, z.shape[1], dtype=z.dtype, device=z.device)
        self.means = sums.index_add_(0, y, z) / counts[:, None]
        within = z - self.means[y]
        self.precision = torch.linalg.pinv(within.T @ within / len(z), hermitian=True)
        self.background_mean = z.mean(0)
        centered = z - self.background_mean
        self.background_precision = torch.linalg.pinv(
            centered.T @ centered / len(z), hermitian=True
        )

    def score_features(
        self, z: torch.Tensor, logits: torch.Tensor, linear: nn.Linear
    ) -> torch.Tensor:
        assert self.means is not None and self.precision is not None
        assert self.background_mean is not None and self.background_precision is not None
        x = z.double()
        diff = x[:, None, :] - self.means[None]  # (B, C, D)
        per_class = ((diff @ self.precision) * diff).sum(-1)
        centered = x - self.background_mean
        background = ((centered @ self.background_precision) * centered).sum(1)
        return -(per_class.amin(1) - background).to(z.dtype)


class NNGuide(_NearestNeighbours):
    """NNGuide (Park et al. 2023): energy times the mean of the ``k`` largest cosine similarities
    to the training features scaled by their energy."""

    def __init__(self, source: FeatureSource, *, k: int = 10) -> None:
        super().__init__(source, k=k)

    def _bank(self, data: Fitted) -> torch.Tensor:
        return F.normalize(data.z, dim=1) * energy(data.logits)[:, None]

    def score_features(
        self, z: torch.Tensor, logits: torch.Tensor, linear: nn.Linear
    ) -> torch.Tensor:
        assert self.bank is not None
        guidance = (F.normalize(z, dim=1) @ self.bank.T).topk(self.k, dim=1).values.mean(1)
        return guidance * energy(logits)


class FDBD(PosthocDetector):
    """fDBD (Liu & Qin 2024): the mean over the other classes of the feature distance to the
    decision boundary with the predicted class, ``|z_j - z_c| / ||w_j - w_c||``, divided by the
    distance of the features from their in-distribution training mean."""

    def __init__(self, source: FeatureSource) -> None:
        super().__init__(source)
        self.mean: torch.Tensor | None = None

    def _fit(self, data: Fitted) -> None:
        self.mean = data.z.mean(0)

    def score_features(
        self, z: torch.Tensor, logits: torch.Tensor, linear: nn.Linear
    ) -> torch.Tensor:
        assert self.mean is not None
        w = linear.weight.detach()
        gaps = torch.cdist(w, w).fill_diagonal_(1.0)  # ||w_i - w_j||; the diagonal meets a 0 gap
        top, predicted = logits.max(1)
        distances = (logits - top[:, None]).abs() / gaps[predicted]
        spread = (z - self.mean).norm(dim=1).clamp_min(1e-8)
        return distances.sum(1) / ((logits.shape[1] - 1) * spread)


class ViM(PosthocDetector):
    """ViM (Wang et al. 2022): energy minus the virtual logit ``alpha ||P_res (z - u)||``, the
    norm of the features (from the origin ``u = -W^+ b``) outside the principal subspace of
    dimension ``d`` (default half the feature dimension), ``alpha`` matching the mean maximum
    logit of the training rows."""

    def __init__(self, source: FeatureSource, *, d: int | None = None) -> None:
        super().__init__(source)
        self.d = d
        self.origin: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None
        self.alpha: float | None = None

    def _fit(self, data: Fitted) -> None:
        w, b = data.linear.weight.detach().double(), data.linear.bias.detach().double()
        dim = data.z.shape[1]
        d = self.d if self.d is not None else dim // 2
        if not 0 < d < dim:
            raise ValueError(f"ViM needs 0 < d < {dim} (the feature dimension), got d={d}")
        self.origin = -(torch.linalg.pinv(w) @ b)
        x = data.z.double() - self.origin
        _, vectors = torch.linalg.eigh(x.T @ x / len(x))  # ascending eigenvalues
        self.residual = vectors[:, : dim - d]
        virtual = (x @ self.residual).norm(dim=1)
        self.alpha = float(data.logits.double().amax(1).mean() / virtual.mean())

    def score_features(
        self, z: torch.Tensor, logits: torch.Tensor, linear: nn.Linear
    ) -> torch.Tensor:
        assert self.origin is not None and self.residual is not None and self.alpha is not None
        virtual = ((z.double() - self.origin) @ self.residual).norm(dim=1) * self.alpha
        return (energy(logits.double()) - virtual).to(z.dtype)
