"""Gradient maps averaged over many inputs: SmoothGrad (noisy copies of the image) and
Integrated Gradients (points on a straight path from a baseline to the image)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from introspect.explain.core import (
    Baseline,
    ExplanationError,
    MapCall,
    MapMethod,
    Target,
    baseline_images,
    check_noise,
    check_positive_int,
    explaining,
    map_method,
    resolve_targets,
)
from introspect.explain.saliency import vanilla_gradient

IG_METHODS = ("gausslegendre", "trapezoid")


def _targets_of(model: nn.Module, images: torch.Tensor, target: Target) -> torch.Tensor:
    """The classes explained, fixed on the clean images before any perturbation."""
    with explaining(model), torch.no_grad():
        return resolve_targets(target, model(images.detach()))


@map_method
def smoothgrad(
    call: MapCall,
    *,
    method: MapMethod = vanilla_gradient,
    samples: int = 25,
    sigma: float = 0.15,
    seed: int = 0,
    noise: torch.Tensor | None = None,
    batch_size: int = 128,
) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): the mean of ``method``'s unnormalized maps over
    ``samples`` copies of each image with Gaussian noise added.

    ``method`` is any map function of this package (default the vanilla gradient); it is
    called with ``layer`` and with the classes ``target`` resolves to on the clean images, so
    noise cannot change the explained class. The noise's standard deviation is ``sigma`` times
    each image's value range (max - min), drawn from a generator seeded by ``seed``;
    ``noise`` instead gives it explicitly as a ``(samples, B, C, H, W)`` tensor. The noisy
    copies go through ``method`` ``batch_size`` at a time. Output as for
    :func:`~introspect.explain.gradcam`.
    """
    check_positive_int("batch_size", batch_size)
    if not callable(method):
        raise ExplanationError(f"method must be a map function such as gradcam, got {method!r}")
    model, layer, x = call.model, call.layer, call.images.detach()
    if noise is None:
        check_positive_int("samples", samples)
        if isinstance(sigma, bool) or not isinstance(sigma, int | float) or sigma < 0:
            raise ExplanationError(f"sigma must be a non-negative number, got {sigma!r}")
        spread = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(1, -1, 1, 1, 1)
        generator = torch.Generator(device=x.device).manual_seed(seed)
        draws = torch.randn(
            (samples, *x.shape), generator=generator, device=x.device, dtype=x.dtype
        )
        noise = draws * (sigma * spread)
    noise = check_noise(noise, x)
    classes = _targets_of(model, x, call.target)
    with explaining(model):  # also allocates outside an inference mode the caller may be in
        noisy = (x.unsqueeze(0) + noise.to(x)).flatten(0, 1)  # sample-major: (S * B, C, H, W)
        repeated = classes.repeat(len(noise))
        total = torch.zeros(x.shape[0], *x.shape[-2:], dtype=x.dtype, device=x.device)
        owner = torch.arange(x.shape[0], device=x.device).repeat(len(noise))
        for begin in range(0, len(noisy), batch_size):
            chunk = slice(begin, begin + batch_size)
            maps = method(model, noisy[chunk], layer, repeated[chunk], normalize=False)
            total.index_add_(0, owner[chunk], maps.to(total.dtype))
    return total / len(noise)


def path_points(steps: int, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alphas, weights)`` of a quadrature of ``[0, 1]`` with ``steps`` points.

    ``"gausslegendre"``: Gauss-Legendre nodes and weights mapped to ``[0, 1]``;
    ``"trapezoid"``: ``steps >= 2`` equally spaced points including both ends, trapezoid
    weights. The weights sum to 1.
    """
    check_positive_int("steps", steps)
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(weights / 2)
    if method == "trapezoid":
        if steps < 2:
            raise ExplanationError("the trapezoid rule needs steps >= 2")
        weights = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return torch.linspace(0, 1, steps, dtype=torch.float64), weights
    raise ExplanationError(f"method must be one of {', '.join(IG_METHODS)}, got {method!r}")


@map_method
def integrated_gradients(
    call: MapCall,
    *,
    baseline: Baseline = 0.0,
    steps: int = 32,
    method: str = "gausslegendre",
    batch_size: int = 128,
) -> torch.Tensor:
    """Integrated Gradients (Sundararajan et al. 2017) of the logit ``z_t``, summed over the
    colour channels: ``sum_c (x - x')_c * integral_0^1 dz_t/dx_c (x' + a (x - x')) da``.

    ``x'`` is ``baseline`` (see :func:`~introspect.explain.core.baseline_images`; default
    black, 0). The integral is a ``steps``-point quadrature (``method``: ``"gausslegendre"``
    or ``"trapezoid"``, see :func:`path_points`); the path points go through the model
    ``batch_size`` at a time. Unnormalized maps are signed and sum, per image, to about
    ``z_t(x) - z_t(x')`` (completeness). ``layer`` is ignored (the map lives in input space).
    Other arguments and the output as for :func:`~introspect.explain.gradcam`.
    """
    check_positive_int("batch_size", batch_size)
    alphas, weights = path_points(steps, method)
    model, x = call.model, call.images.detach()
    classes = _targets_of(model, x, call.target)
    alphas, weights = alphas.to(x), weights.to(x)
    count = len(alphas)
    with explaining(model):
        start = baseline_images(x, baseline)
        integral = torch.zeros_like(x)
        for begin in range(0, x.shape[0] * count, batch_size):
            index = torch.arange(
                begin, min(begin + batch_size, x.shape[0] * count), device=x.device
            )
            image, step = index // count, index % count
            a = alphas[step].view(-1, 1, 1, 1)
            points = (start[image] + a * (x[image] - start[image])).requires_grad_(True)
            logits = model(points)
            score = logits.gather(1, classes[image, None]).sum()
            (grad,) = torch.autograd.grad(score, points)
            contribution = grad * weights[step].view(-1, 1, 1, 1)
            integral.index_add_(0, image, contribution)
        return ((x - start) * integral).sum(dim=1)
