"""Introspective features of a quality (regression) model: "why q, rather than q'?".

For a model whose head outputs a score ``s`` (one output), the feature of an image is the
gradient, at the head's weight, of the squared error ``(s - q')^2`` between its score and each
contrast level ``q'`` of a set ``q'_1 ... q'_K``, stacked in contrast order like the per-class
features of a classifier (``K * D`` values, plus ``K`` bias gradients with ``include_bias``),
then normalized as every feature (``none``, ``l2`` or ``standardize``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from introspect.gradients.extract import _outer, head_pass
from introspect.gradients.normalize import Standardizer, check_normalize, normalize_features


def contrast_tensor(contrasts: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """The contrast levels as a 1-D float64 tensor; a ``ValueError`` for none or non-finite."""
    levels = torch.as_tensor(contrasts, dtype=torch.float64).flatten()
    if levels.numel() == 0:
        raise ValueError("give at least one contrast level q' (e.g. [0.25, 0.5, 0.75, 1.0])")
    if not bool(torch.isfinite(levels).all()):
        raise ValueError(f"contrast levels must be finite, got {levels.tolist()}")
    return levels


def score_gradients(
    scores: torch.Tensor, contrasts: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """``(B, K, 1)`` gradients of ``(s - q'_k)^2`` at the scores ``(B, 1)``: ``2 (s - q'_k)``."""
    levels = contrast_tensor(contrasts).to(device=scores.device, dtype=scores.dtype)
    return 2.0 * (scores[:, None, :] - levels[None, :, None])


def extract_regression_with_outputs(
    model: nn.Module,
    images: torch.Tensor,
    contrasts: Sequence[float] | torch.Tensor,
    *,
    include_bias: bool = False,
    normalize: str = "l2",
    head: str | nn.Module | None = None,
    standardizer: Standardizer | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(features (B, F), head input h, scores (B, 1))`` from one forward pass.

    Row ``i`` of the features is ``[grad_W (s_i - q'_1)^2, ..., grad_W (s_i - q'_K)^2]`` with
    ``W`` the weight of the head (the last ``nn.Linear`` executed, or ``head``) when only image
    ``i`` is backpropagated; with ``include_bias`` each block is followed by its bias gradient.
    The model must output one score per image, ``(B, 1)``. Like ``gradients.extract``: no
    backward through the backbone, detached results, parameters untouched; use eval mode.
    """
    check_normalize(normalize, standardizer)
    levels = contrast_tensor(contrasts)

    def gradients(scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[1] != 1:
            raise ValueError(
                f"a quality model outputs one score per image, got {scores.shape[1]} outputs; "
                "give the model a single-output head"
            )
        return score_gradients(scores, levels)

    delta, h, scores = head_pass(
        model, images, head=head, include_bias=include_bias, gradients=gradients
    )
    raw = _outer(delta, h, include_bias)
    return normalize_features(raw, normalize, standardizer), h, scores


def extract_regression(
    model: nn.Module,
    images: torch.Tensor,
    contrasts: Sequence[float] | torch.Tensor,
    **options: Any,
) -> torch.Tensor:
    """The regression introspective features ``(B, K * D [+ K])`` of ``images``; see
    ``extract_regression_with_outputs`` (same options)."""
    return extract_regression_with_outputs(model, images, contrasts, **options)[0]
