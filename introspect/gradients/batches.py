"""Streams of cache rows: the gradient factors of each batch as the feature cache stores them
(``iter_features``), and the factors of loaded cache tensors (``features_of``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from introspect.gradients.cache import FIELDS
from introspect.gradients.extract import extract_features
from introspect.gradients.factors import GradientFactors


def iter_features(
    backbone: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    feature_options: Mapping[str, Any],
    device: torch.device | str = "cpu",
    desc: str = "features",
    total: int | None = None,
    progress: bool = True,
) -> Iterator[dict[str, torch.Tensor]]:
    """The cached ``FIELDS`` (on CPU) of each batch as it is read, from one forward pass per
    batch: the unnormalized gradient factors (``feature_options`` without ``normalize``, which
    ``features_of`` applies) and the labels. ``backbone`` must expose its ``head`` module."""
    options = {k: v for k, v in feature_options.items() if k != "normalize"}
    for images, labels in tqdm(batches, desc=desc, total=total, leave=False, disable=not progress):
        images = images.to(device, non_blocking=True)
        factors = extract_features(
            backbone, images, head=backbone.head, normalize="none", materialize=False, **options
        ).factors
        assert factors is not None
        values = (factors.g.reshape(len(factors), -1), factors.h, labels)
        yield {k: v.detach().cpu() for k, v in zip(FIELDS, values, strict=True)}


def features_of(
    tensors: Mapping[str, torch.Tensor], *, num_classes: int, normalize: str, include_bias: bool
) -> GradientFactors:
    """The gradient factors of loaded cache ``tensors`` (views, no copy), normalized as
    ``normalize`` (``"standardize"`` is left to the head: the factors come unnormalized)."""
    grad = tensors["grad"]
    g = grad.view(len(grad), -1, num_classes)
    return GradientFactors.from_parts(
        g,
        tensors["penult"],
        include_bias=include_bias,
        normalize="none" if normalize == "standardize" else normalize,
    )
