"""Max-sensitivity of explanation maps (Yeh et al. 2019): how much a map changes, relative to
its size, under small input perturbations that should not matter.

For each image ``x`` and ``n`` perturbations ``δ`` drawn uniformly from the L∞ ball of radius
``r``, the score is ``max_δ ‖map(x + δ) − map(x)‖₂ / ‖map(x)‖₂``, the maps taken for the class
the model predicts on ``x`` (lower = more robust).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from introspect.explain.core import (
    ExplanationError,
    MapMethod,
    check_images,
    check_noise,
    check_positive_int,
    explaining,
)


def uniform_noise(images: torch.Tensor, samples: int, radius: float, seed: int = 0) -> torch.Tensor:
    """``(samples, B, C, H, W)`` perturbations uniform in ``[-radius, radius]`` for ``images``
    ``(B, C, H, W)``, drawn on the CPU from a generator seeded with ``seed``."""
    check_positive_int("samples", samples)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand((samples, *images.shape), generator=generator, dtype=torch.float64)
    return ((2.0 * noise - 1.0) * radius).to(device=images.device, dtype=images.dtype)


def max_sensitivity(
    method: MapMethod,
    model: nn.Module,
    images: torch.Tensor,
    *,
    layer: Any = None,
    options: Mapping[str, Any] | None = None,
    samples: int = 8,
    radius: float = 0.02,
    seed: int = 0,
    noise: torch.Tensor | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """``(B,)`` max-sensitivity of the maps of ``method`` on ``images`` (see the module).

    ``method`` is called as ``method(model, images, layer, target, normalize=False,
    **options)``; the perturbed images go through it ``batch_size`` at a time. ``noise``
    ``(samples, B, C, H, W)`` gives the perturbations; by default :func:`uniform_noise` draws
    ``samples`` of them with ``radius`` and ``seed``. A zero map gives ``inf`` (``nan`` if no
    perturbation changes it).
    """
    check_images(images)
    check_positive_int("batch_size", batch_size)
    options = dict(options or {})
    x = images.detach()
    if noise is None:
        if not radius > 0:
            raise ExplanationError(f"radius must be positive, got {radius!r}")
        noise = uniform_noise(x, samples, radius, seed)
    noise = check_noise(noise, x)
    with explaining(model), torch.no_grad():
        target = model(x).argmax(dim=1)
    reference = method(model, x, layer, target, normalize=False, **options).flatten(1).double()
    perturbed = (x[None] + noise.to(x)).flatten(0, 1)
    targets = target.repeat(noise.shape[0])
    maps = torch.cat(
        [
            method(
                model,
                perturbed[i : i + batch_size],
                layer,
                targets[i : i + batch_size],
                normalize=False,
                **options,
            )
            .flatten(1)
            .double()
            for i in range(0, perturbed.shape[0], batch_size)
        ]
    ).view(noise.shape[0], x.shape[0], -1)
    change = (maps - reference[None]).norm(dim=2)
    return (change / reference.norm(dim=1)[None]).amax(dim=0)
