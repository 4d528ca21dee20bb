"""Per-sample training augmentations of float RGB images (3, H, W) in [0, 1]."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchvision import transforms as T

from introspect.data.errors import DataError

AUGMENTATIONS = ("none", "standard", "gaussian_noise", "augmix")


class GaussianNoise:
    """Add i.i.d. N(0, std^2) noise to every pixel, then clip to [0, 1]."""

    def __init__(self, std: float) -> None:
        self.std = std

    def __call__(self, image: Tensor) -> Tensor:
        return (image + self.std * torch.randn_like(image)).clamp_(0.0, 1.0)

    def __repr__(self) -> str:
        return f"GaussianNoise(std={self.std})"


class AugMixFloat:
    """torchvision's AugMix applied to the image quantized to uint8, returned as float.

    As in the AugMix paper, the operations that overlap with CIFAR-10-C's test corruptions
    (brightness, color, contrast, sharpness) are left out (``all_ops=False``).
    """

    def __init__(self, severity: int) -> None:
        self.augmix = T.AugMix(severity=severity, all_ops=False)

    def __call__(self, image: Tensor) -> Tensor:
        as_uint8 = (image * 255.0).round_().clamp_(0, 255).to(torch.uint8)
        return self.augmix(as_uint8).float().div_(255.0)

    def __repr__(self) -> str:
        return f"AugMixFloat({self.augmix!r})"


def build_augmentation(
    name: str,
    *,
    image_size: int,
    padding: int = 4,
    noise_std: float = 0.1,
    augmix_severity: int = 3,
) -> Callable[[Tensor], Tensor] | None:
    """The per-sample training augmentation ``name`` for square images of side ``image_size``.

    ``standard``: random crop of the zero-padded image (padding ``max(1, image_size // 8)``
    instead of ``padding`` below 16 px) and a random horizontal flip; ``gaussian_noise``: add
    N(0, noise_std^2) and clip; ``augmix``: AugMix at ``augmix_severity``; ``none``: None.
    """
    if name not in AUGMENTATIONS:
        raise DataError(f"unknown augmentation {name!r}; valid: {', '.join(AUGMENTATIONS)}")
    if image_size < 1:
        raise DataError(f"image_size={image_size} must be a positive integer")
    if name == "none":
        return None
    if name == "standard":
        if padding < 0:
            raise DataError(f"padding={padding} must be >= 0")
        pad = max(1, image_size // 8) if image_size < 16 else padding
        return T.Compose([T.RandomCrop(image_size, padding=pad, fill=0), T.RandomHorizontalFlip()])
    if name == "gaussian_noise":
        if noise_std < 0:
            raise DataError(f"noise_std={noise_std} must be >= 0")
        return GaussianNoise(noise_std)
    if not 1 <= augmix_severity <= 10:
        raise DataError(f"augmix_severity={augmix_severity} must be in 1..10")
    return AugMixFloat(augmix_severity)
