"""Confidence scores that need the model: ODIN and Mahalanobis (docs/guides/scores.md, baselines).

Images are RGB in ``[0, 1]`` (the ``Backbone`` convention: normalization happens inside the
model), so input perturbations of size ``eps`` are in pixel units. The reference codes of ODIN
and of Lee et al. perturb normalized images by ``eps / std`` per channel, which is the same
``eps`` in pixel space; perturbed images are not clipped to ``[0, 1]`` (neither code does).
The model must be in eval mode (BatchNorm in training mode mixes the samples of a batch). All
functions work under ``torch.inference_mode`` and return detached ``(B,)`` tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from introspect.backbones.head import forward_with_head_input, resolve_head

ODIN_T = 1000.0
ODIN_EPS = 0.0014


def perturb_towards(
    objective: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, eps: float
) -> torch.Tensor:
    """``x + eps * sign(grad_x objective(x))``: one signed-gradient step that increases the
    per-sample ``objective`` (``(B,)``; samples must not interact). Returns a detached tensor."""
    with torch.inference_mode(False), torch.enable_grad():
        x = images.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(objective(x).sum(), x)
    return (x + eps * g.sign()).detach()


def logits_and_penultimate(
    model: nn.Module, images: torch.Tensor, head: nn.Linear | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, penultimate)`` from one forward pass; the penultimate activations are the input
    of ``head`` (default ``model.head``, else the last ``nn.Linear`` the model executes), which
    must run exactly once. Autograd records the pass as usual."""
    if head is None:
        head = getattr(model, "head", None)
    return forward_with_head_input(model, resolve_head(model, head, images[:1]), images)


def odin(
    model: nn.Module, images: torch.Tensor, *, T: float = ODIN_T, eps: float = ODIN_EPS
) -> torch.Tensor:
    """ODIN (Liang et al. 2018): ``max softmax(z(x~) / T)`` with the perturbed input
    ``x~ = x - eps * sign(-grad_x log max softmax(z(x) / T))``.

    ``images`` are in ``[0, 1]``, so ``eps`` is in pixel units. Defaults are the paper's
    (``T = 1000``, ``eps = 0.0014``, its CIFAR-10 value). The GradTrust code used ``T = 100`` and
    ``eps = 0.0014`` on *normalized* images, about ``0.0014 * std`` (~0.0003) in pixel units.
    """
    if T <= 0:
        raise ValueError(f"temperature T must be positive, got {T}")

    def log_msp(x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(model(x) / T, dim=1).amax(dim=1)

    perturbed = perturb_towards(log_msp, images, eps) if eps else images
    with torch.inference_mode(False), torch.no_grad():
        x = perturbed.clone() if perturbed.is_inference() else perturbed
        return torch.softmax(model(x) / T, dim=1).amax(dim=1)


class Mahalanobis:
    """Mahalanobis confidence (Lee et al. 2018) on penultimate features: minus the smallest
    squared Mahalanobis distance to a class mean, under one covariance shared by all classes.

    Fit by streaming: ``update(features, labels)`` batch by batch then ``finalize()``, or
    ``fit(model, loader)``. Only sums are kept (per-class sums and counts, and one ``D x D``
    sum of outer products, all float64), so memory is ``O(D^2 + C D)`` whatever the number of
    samples. The covariance is the pooled within-class maximum-likelihood estimate (divided by
    the number of samples, like scikit-learn's ``EmpiricalCovariance``); its pseudo-inverse is
    the precision.
    """

    def __init__(self, num_classes: int) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> Mahalanobis:
        """Forget all statistics."""
        self.count = 0
        self._shift: torch.Tensor | None = None
        self._class_sums: torch.Tensor | None = None
        self._class_counts: torch.Tensor | None = None
        self._outer: torch.Tensor | None = None
        self.means: torch.Tensor | None = None
        self.covariance: torch.Tensor | None = None
        self.precision: torch.Tensor | None = None
        return self

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> Mahalanobis:
        """Add a batch of features ``(B, D)`` with class labels ``(B,)``."""
        if features.ndim != 2 or labels.shape != (features.shape[0],):
            raise ValueError(
                f"expected features (B, D) and labels (B,), got {tuple(features.shape)} and "
                f"{tuple(labels.shape)}"
            )
        if features.shape[0] == 0:
            return self
        labels = labels.to(features.device).long()
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise ValueError(f"labels must lie in [0, {self.num_classes})")
        x = features.detach().to(torch.float64)
        if self._shift is None:
            # Sums are taken around the first batch's mean to avoid cancellation.
            self._shift = x.mean(0)
            dim = x.shape[1]
            self._class_sums = x.new_zeros(self.num_classes, dim)
            self._class_counts = x.new_zeros(self.num_classes)
            self._outer = x.new_zeros(dim, dim)
        assert self._class_sums is not None and self._class_counts is not None
        assert self._outer is not None
        if x.shape[1] != self._shift.numel():
            raise ValueError(f"features have {x.shape[1]} dims, earlier ones {self._shift.numel()}")
        centred = x - self._shift.to(x.device)
        self._class_sums = self._class_sums.to(x.device).index_add_(0, labels, centred)
        self._class_counts = self._class_counts.to(x.device).index_add_(
            0, labels, torch.ones_like(centred[:, 0])
        )
        self._outer = self._outer.to(x.device) + centred.T @ centred
        self.count += x.shape[0]
        return self

    def finalize(self) -> Mahalanobis:
        """Compute class means, shared covariance and precision from the accumulated sums."""
        if self._class_counts is None or self._class_sums is None or self._outer is None:
            raise RuntimeError("no features seen; call update(features, labels) first")
        assert self._shift is not None
        missing = torch.nonzero(self._class_counts == 0).flatten().tolist()
        if missing:
            raise ValueError(f"classes {missing[:10]} have no samples; every class needs one")
        centred_means = self._class_sums / self._class_counts[:, None]
        between = (centred_means.T * self._class_counts) @ centred_means
        self.covariance = (self._outer - between) / self.count
        self.precision = torch.linalg.pinv(self.covariance, hermitian=True)
        self.means = centred_means + self._shift.to(centred_means.device)
        return self

    def fit(
        self,
        model: nn.Module,
        loader: Iterable[tuple | list],
        *,
        head: nn.Linear | None = None,
    ) -> Mahalanobis:
        """Reset, then accumulate the penultimate features of every ``(images, labels, ...)``
        batch of ``loader`` (see ``logits_and_penultimate``) and ``finalize``."""
        self.reset()
        device = next(iter(model.parameters())).device
        with torch.no_grad():
            for batch in loader:
                images, labels = batch[0], batch[1]
                _, feats = logits_and_penultimate(model, images.to(device), head)
                self.update(feats, labels)
        return self.finalize()

    def _fitted(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.means is None or self.precision is None:
            raise RuntimeError("Mahalanobis is not fitted; call fit(...) or finalize() first")
        return self.means, self.precision

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distances ``(B, C)`` of features ``(B, D)`` to every class mean,
        differentiable w.r.t. ``features``."""
        means, precision = self._fitted()
        x = features.to(torch.float64)
        means = means.to(x.device)
        precision = precision.to(x.device)
        x_p = x @ precision
        return (
            (x_p * x).sum(1, keepdim=True)
            - 2 * x_p @ means.T
            + ((means @ precision) * means).sum(1)[None, :]
        )

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """``-min_c`` squared Mahalanobis distance, ``(B,)`` in the dtype of ``features``."""
        return -self.distances(features).amin(1).to(features.dtype)

    def score_images(
        self,
        model: nn.Module,
        images: torch.Tensor,
        *,
        eps: float = 0.0,
        head: nn.Linear | None = None,
    ) -> torch.Tensor:
        """``score`` of the penultimate features of ``images`` in ``[0, 1]``; with ``eps > 0``
        after Lee et al.'s input preprocessing ``x - eps * sign(grad_x min_c d_c(f(x)))``
        (``eps`` in pixel units)."""

        def confidence(x: torch.Tensor) -> torch.Tensor:
            return self.score(logits_and_penultimate(model, x, head)[1])

        x = perturb_towards(confidence, images, eps) if eps else images
        with torch.inference_mode(False), torch.no_grad():
            x = x.clone() if x.is_inference() else x
            return confidence(x)
