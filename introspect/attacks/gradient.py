"""L-infinity attacks built from signed input gradients of the cross-entropy: FGSM, BIM, PGD
and the iterative least-likely class method."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Parameters of ``model`` need no gradient inside the block; their flags are restored."""
    flags = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def check_images(images: torch.Tensor, labels: torch.Tensor) -> None:
    """``ValueError`` unless ``images`` is a floating ``(B, ...)`` batch in ``[0, 1]`` and
    ``labels`` a ``(B,)`` tensor."""
    if not images.is_floating_point() or images.ndim < 2:
        raise ValueError(f"images must be a floating (B, ...) tensor, got {tuple(images.shape)}")
    if labels.shape != images.shape[:1]:
        raise ValueError(
            f"labels must be (B,) = {tuple(images.shape[:1])}, got {tuple(labels.shape)}"
        )
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError("images must lie in [0, 1] (normalization belongs inside the model)")


def _check_linf(eps: float, alpha: float, steps: int) -> None:
    if eps < 0 or alpha <= 0 or isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(
            f"the attack needs eps >= 0, alpha > 0 and an integer steps >= 1 "
            f"(got eps={eps}, alpha={alpha}, steps={steps})"
        )


def _signed_steps(
    model: nn.Module,
    images: torch.Tensor,
    start: torch.Tensor,
    targets: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    direction: float,
) -> torch.Tensor:
    """``steps`` projected steps ``x <- clip_[0,1](clip_{x0, eps}(x + direction * alpha *
    sign(grad_x CE(model(x), targets))))`` from ``start``; CE is the batch mean."""
    x0 = images.detach()
    x = start.detach()
    with torch.inference_mode(False), torch.enable_grad(), frozen(model):
        for _ in range(steps):
            x = x.clone().requires_grad_(True)
            loss = F.cross_entropy(model(x), targets)
            (grad,) = torch.autograd.grad(loss, x)
            x = x.detach() + direction * alpha * grad.sign()
            x = torch.min(torch.max(x, x0 - eps), x0 + eps).clamp(0, 1)
    return x.detach()


def fgsm(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float
) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): ``clip_[0,1](x + eps * sign(grad_x
    CE(model(x), y)))``."""
    check_images(images, labels)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return _signed_steps(
        model, images, images, labels, eps=eps, alpha=max(eps, 1e-12), steps=1, direction=1.0
    )


def kurakin_steps(eps: float) -> int:
    """Number of iterations of Kurakin et al. (2017) for ``eps`` in ``[0, 1]`` units:
    ``min(255 eps + 4, 1.25 * 255 eps)``, at least 1."""
    return max(1, int(min(255 * eps + 4, 1.25 * 255 * eps)))


def bim(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    alpha: float = 1 / 255,
    steps: int | None = None,
) -> torch.Tensor:
    """Basic iterative method (Kurakin et al. 2017): ``steps`` FGSM steps of size ``alpha``
    from the clean image, each projected onto the ``eps`` L-inf ball and ``[0, 1]``;
    ``steps=None`` takes the paper's ``min(255 eps + 4, 1.25 * 255 eps)``."""
    check_images(images, labels)
    steps = kurakin_steps(eps) if steps is None else steps
    _check_linf(eps, alpha, steps)
    return _signed_steps(
        model, images, images, labels, eps=eps, alpha=alpha, steps=steps, direction=1.0
    )


def pgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    alpha: float = 2 / 255,
    steps: int = 10,
    random_start: bool = True,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient descent, L-inf (Madry et al. 2018): BIM started from a uniformly random
    point of the ``eps`` ball (clipped to ``[0, 1]``) when ``random_start``.

    The start is drawn on the CPU from ``generator`` (default: one seeded with ``seed``), so it
    does not depend on the device."""
    check_images(images, labels)
    _check_linf(eps, alpha, steps)
    start = images
    if random_start:
        g = generator if generator is not None else torch.Generator().manual_seed(seed)
        noise = torch.rand(images.shape, generator=g, dtype=images.dtype)
        start = (images + (2 * noise.to(images.device) - 1) * eps).clamp(0, 1)
    return _signed_steps(
        model, images, start, labels, eps=eps, alpha=alpha, steps=steps, direction=1.0
    )


def least_likely(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The class of smallest logit (= smallest probability) of every image, ``(B,)``."""
    with torch.inference_mode(False), torch.no_grad():
        return model(images).argmin(1)


def iterll(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    alpha: float = 1 / 255,
    steps: int | None = None,
) -> torch.Tensor:
    """Iterative least-likely class method (Kurakin et al. 2017): BIM steps *down* the
    cross-entropy of the class the model finds least likely on the clean image,
    ``x <- clip(x - alpha * sign(grad_x CE(model(x), y_LL)))``. ``labels`` are only checked
    (the target is the model's); ``steps=None`` as in ``bim``."""
    check_images(images, labels)
    steps = kurakin_steps(eps) if steps is None else steps
    _check_linf(eps, alpha, steps)
    targets = least_likely(model, images.detach())
    return _signed_steps(
        model, images, images, targets, eps=eps, alpha=alpha, steps=steps, direction=-1.0
    )
