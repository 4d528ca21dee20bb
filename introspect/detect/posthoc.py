"""Post-hoc OOD detectors of the current literature in the one ``Detector`` protocol: ViM, KNN,
ReAct, ASH (-p, -b, -s), DICE, GEN, SHE, RMD (relative Mahalanobis), NNGuide and fDBD.

Every detector reads a ``FeatureSource``: the features ``z`` that enter a final linear layer
``logits = W z + b`` and that layer. ``Penultimate`` is the classifier's own (``z`` = the
penultimate activations ``h``, the layer = its head); ``IntrospectiveHidden`` is the trained
introspective head's (``z`` = the input of the last linear layer of ``H``, on ``r_x``), so each
detector has an introspective variant on the same math. Scores are confidences (higher = more
in-distribution). Detectors with statistics are fitted on ``(images, labels)`` batches of the
training distribution (rows with a label < 0 are ignored); all scoring is batched.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from introspect.backbones.head import resolve_head
from introspect.detect.batch import images_of
from introspect.models.stage2 import IntrospectiveClassifier
from introspect.scores.model_based import logits_and_penultimate


class Penultimate:
    """The classifier ``model``'s penultimate activations and its last linear layer ``head``
    (default: ``model.head`` or the last ``nn.Linear`` executed)."""

    def __init__(self, model: nn.Module, head: nn.Linear | None = None) -> None:
        self.model, self._linear = model, head
        self.device = next(iter(model.parameters())).device

    def linear(self, images: torch.Tensor) -> nn.Linear:
        """The final linear layer (resolved on a probe of ``images``)."""
        if self._linear is None:
            head = getattr(self.model, "head", None)
            self._linear = resolve_head(self.model, head, images[:1].to(self.device))
        return self._linear

    def outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, features)`` of ``images``, detached."""
        images = images.to(self.device)
        with torch.no_grad():
            logits, h = logits_and_penultimate(self.model, images, self.linear(images))
        return logits.detach(), h.detach().flatten(1)


class IntrospectiveHidden:
    """The trained introspective head ``H``: its features are the input of its last linear layer
    (on the standardized introspective features ``r_x``), its logits ``H``'s."""

    def __init__(self, head: IntrospectiveClassifier) -> None:
        self.head = head
        self.device = head.device

    def linear(self, images: torch.Tensor) -> nn.Linear:
        """The last linear layer of ``H``."""
        last = self.head.head[-1]
        assert isinstance(last, nn.Linear)
        return last

    def outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits of H, input of its last linear layer)`` of ``images``, detached."""
        images = images.to(self.device)
        with torch.no_grad():
            logits, hidden = self.head.classify_with_hidden(self.head.features(images))
        return logits.detach(), hidden.detach()


FeatureSource = Penultimate | IntrospectiveHidden


@dataclass
class Fitted:
    """Features of the in-distribution rows of a fitting loader: ``z`` (N, D), ``logits``
    (N, C), class ``labels`` (N,) and the final ``linear`` layer."""

    z: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    linear: nn.Linear


def energy(logits: torch.Tensor) -> torch.Tensor:
    """Negative free energy ``logsumexp(logits)`` (T = 1), higher = more in-distribution."""
    return torch.logsumexp(logits, dim=1)


def quantile(values: torch.Tensor, q: float) -> float:
    """The ``q`` quantile of all ``values`` with linear interpolation (numpy's default), for
    tensors of any size."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"the quantile must lie in [0, 1], got {q}")
    ordered = values.flatten().double().sort().values
    position = q * (ordered.numel() - 1)
    low = int(position)
    high = min(low + 1, ordered.numel() - 1)
    return float(ordered[low] + (position - low) * (ordered[high] - ordered[low]))


class PosthocDetector:
    """Base of the post-hoc detectors on a ``FeatureSource``: ``fit`` collects the features of
    the in-distribution rows, ``score`` maps a batch to ``(B,)`` confidences."""

    needs_fit = True

    def __init__(self, source: FeatureSource) -> None:
        self.source = source
        self.fitted = False

    def fit(self, loader: Iterable[Any]) -> PosthocDetector:
        """Fit on ``(images, labels)`` batches (rows labelled < 0 are skipped); returns ``self``."""
        zs, logits, labels, linear = [], [], [], None
        for batch in loader:
            images, y = images_of(batch), torch.as_tensor(batch[1])
            known = y >= 0
            if known.any():
                out, z = self.source.outputs(images[known])
                zs.append(z), logits.append(out), labels.append(y[known].to(z.device))
                linear = self.source.linear(images)
        if linear is None:
            raise ValueError("fit needs in-distribution rows (labels >= 0) in loader")
        return self.fit_features(
            Fitted(torch.cat(zs), torch.cat(logits), torch.cat(labels), linear)
        )

    def fit_features(self, data: Fitted) -> PosthocDetector:
        """Fit on in-distribution features already extracted; returns ``self``."""
        with torch.no_grad():
            self._fit(data)
        self.fitted = True
        return self

    def _fit(self, data: Fitted) -> None:
        """Fit the detector's statistics (nothing by default)."""

    def score(self, batch: Any) -> torch.Tensor:
        """``(B,)`` confidences of a batch (images, or a tuple led by them)."""
        if self.needs_fit and not self.fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(loader) first")
        images = images_of(batch)
        logits, z = self.source.outputs(images)
        with torch.no_grad():
            return self.score_features(z, logits, self.source.linear(images))

    def score_features(
        self, z: torch.Tensor, logits: torch.Tensor, linear: nn.Linear
    ) -> torch.Tensor:
        """``(B,)`` confidences of features ``z`` with ``logits = linear(z)`` (features already
        extracted; ``score`` extracts them from images)."""
        raise NotImplementedError


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


class KNN(PosthocDetector):
    """KNN (Sun et al. 2022): minus the distance from the L2-normalized features to their
    ``k``-th nearest normalized in-distribution training feature."""

    def __init__(self, source: FeatureSource, *, k: int = 50) -> None:
        super().__init__(source)
        if k < 1:
            raise ValueError(f"KNN needs k >= 1, got {k}")
        self.k = k
        self.bank: torch.Tensor | None = None

    def _fit(self, data: Fitted) -> None:
        if len(data.z) < self.k:
            raise ValueError(f"KNN with k={self.k} needs at least {self.k} fitting rows")
        self.bank = F.normalize(data.z.double(), dim=1)

    def score_features(
        self, z: torch.Tensor, logits: torch.Tensor, linear: nn.Linear
    ) -> torch.Tensor:
        assert self.bank is not None
        cosine = F.normalize(z.double(), dim=1) @ self.bank.T
        kth = cosine.topk(self.k, dim=1).values[:, -1]  # k-th largest similarity = k-th nearest
        return -(2 - 2 * kth).clamp_min(0).sqrt().to(z.dtype)


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


class NNGuide(PosthocDetector):
    """NNGuide (Park et al. 2023): energy times the mean of the ``k`` largest cosine similarities
    to the training features scaled by their energy."""

    def __init__(self, source: FeatureSource, *, k: int = 10) -> None:
        super().__init__(source)
        if k < 1:
            raise ValueError(f"NNGuide needs k >= 1, got {k}")
        self.k = k
        self.bank: torch.Tensor | None = None

    def _fit(self, data: Fitted) -> None:
        if len(data.z) < self.k:
            raise ValueError(f"NNGuide with k={self.k} needs at least {self.k} fitting rows")
        self.bank = F.normalize(data.z, dim=1) * energy(data.logits)[:, None]

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


POSTHOC: dict[str, type[PosthocDetector]] = {
    "vim": ViM,
    "knn": KNN,
    "react": ReAct,
    "ash": ASH,
    "dice": DICE,
    "gen": GEN,
    "she": SHE,
    "rmd": RMD,
    "nnguide": NNGuide,
    "fdbd": FDBD,
}
