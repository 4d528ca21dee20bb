"""Carlini-Wagner L2 attack (Carlini & Wagner, S&P 2017)."""

from __future__ import annotations

import torch
from torch import nn

from introspect.attacks.gradient import check_images, frozen

TANH_LIMIT = 1 - 1e-6  # keeps atanh finite on pixels at exactly 0 or 1


def cw_margin(logits: torch.Tensor, labels: torch.Tensor, kappa: float) -> torch.Tensor:
    """``max(Z_y - max_{i != y} Z_i, -kappa)`` per sample: C&W's objective ``f_6``, untargeted."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(nn.functional.one_hot(labels, logits.shape[1]).bool(), -torch.inf)
    return (true - others.amax(1)).clamp_min(-kappa)


def cw_l2(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float | None = None,
    c: float = 1.0,
    kappa: float = 0.0,
    steps: int = 50,
    lr: float = 0.01,
    search_steps: int = 1,
) -> torch.Tensor:
    """Untargeted C&W L2: Adam (``lr``, ``steps``) on ``w`` with ``x' = (tanh(w) + 1) / 2``,
    minimizing ``||x' - x||_2^2 + c * f_6(x')`` per sample; returns, per image, the
    misclassified ``x'`` of smallest L2 distance met during the optimization, or the clean
    image when none was (or, with ``eps``, none within L2 distance ``eps``).

    ``search_steps > 1`` adds the paper's binary search over ``c`` per sample (start ``c``;
    multiplied by 10 until an attack succeeds, then bisected). There is no early abort, so a
    sample's result does not depend on the rest of the batch.
    """
    check_images(images, labels)
    if c <= 0 or kappa < 0 or lr <= 0 or steps < 1 or search_steps < 1:
        raise ValueError(
            f"C&W needs c > 0, kappa >= 0, lr > 0, steps >= 1 and search_steps >= 1 "
            f"(got c={c}, kappa={kappa}, lr={lr}, steps={steps}, search_steps={search_steps})"
        )
    if eps is not None and eps <= 0:
        raise ValueError(f"eps (the largest accepted L2 distance) must be positive, got {eps}")
    x0 = images.detach()
    n = x0.shape[0]
    flat = (n, -1)
    w0 = torch.atanh((2 * x0 - 1).clamp(-TANH_LIMIT, TANH_LIMIT))
    best = x0.clone()
    best_l2 = torch.full((n,), torch.inf, dtype=x0.dtype, device=x0.device)
    const = torch.full_like(best_l2, c)
    lower = torch.zeros_like(best_l2)
    upper = torch.full_like(best_l2, torch.inf)
    with torch.inference_mode(False), torch.enable_grad(), frozen(model):
        for _ in range(search_steps):
            w = w0.clone().requires_grad_(True)
            optimizer = torch.optim.Adam([w], lr=lr)
            succeeded = torch.zeros(n, dtype=torch.bool, device=x0.device)
            for _ in range(steps):
                adv = (torch.tanh(w) + 1) / 2
                l2 = (adv - x0).reshape(flat).square().sum(1)
                logits = model(adv)
                loss = (l2 + const * cw_margin(logits, labels, kappa)).sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    wrong = logits.argmax(1) != labels
                    if eps is not None:
                        wrong &= l2.sqrt() <= eps
                    better = wrong & (l2 < best_l2)
                    best_l2 = torch.where(better, l2.detach(), best_l2)
                    best[better] = adv.detach()[better]
                    succeeded |= wrong
            upper = torch.where(succeeded, torch.minimum(upper, const), upper)
            lower = torch.where(succeeded, lower, torch.maximum(lower, const))
            const = torch.where(upper.isinf(), const * 10, (lower + upper.nan_to_num(posinf=0)) / 2)
    return best.detach()
