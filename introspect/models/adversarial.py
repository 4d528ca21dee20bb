"""Projected gradient descent (L-infinity) adversarial examples for robust stage-1 training."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pgd_linf(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epsilon: float,
    step_size: float,
    steps: int,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Untargeted L-inf PGD on cross-entropy; returns images in ``[0, 1]`` within ``epsilon``.

    The model is used as it is (callers choose train or eval mode); its parameters receive no
    gradient. Inputs are RGB in ``[0, 1]``, so ``epsilon`` is on that scale (e.g. 8/255).
    """
    if epsilon < 0 or step_size <= 0 or steps < 1:
        raise ValueError(
            f"PGD needs epsilon >= 0, step_size > 0 and steps >= 1 "
            f"(got {epsilon}, {step_size}, {steps})"
        )
    x0 = images.detach()
    if random_start:
        noise = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x = (x0 + (2 * noise - 1) * epsilon).clamp(0, 1)
    else:
        x = x0.clone()
    requires = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for _ in range(steps):
            x.requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(model(x), labels)
                (grad,) = torch.autograd.grad(loss, x)
            x = x.detach() + step_size * grad.sign()
            x = torch.min(torch.max(x, x0 - epsilon), x0 + epsilon).clamp(0, 1)
    finally:
        for p, r in zip(model.parameters(), requires, strict=True):
            p.requires_grad_(r)
    return x.detach()
