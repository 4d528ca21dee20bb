"""The images of a batch as the detectors read it."""

from __future__ import annotations

from typing import Any

import torch


def images_of(batch: Any) -> torch.Tensor:
    """The image tensor of a batch: the batch itself or its first element."""
    images = batch if isinstance(batch, torch.Tensor) else batch[0]
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"a batch must be a tensor or a tuple led by one, got {type(batch)}")
    return images
