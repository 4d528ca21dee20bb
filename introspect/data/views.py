"""SimCLR's augmentation (Chen et al. 2020) of float RGB images in [0, 1] and the dataset of
two augmented views per image that contrastive pre-training reads."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from introspect.data.errors import DataError


class SimCLRAugment:
    """One random view of a (3, H, W) image: random resized crop (area scale in
    ``[min_scale, 1]``, aspect ratio in ``[3/4, 4/3]``, back to H x W, bilinear), horizontal
    flip with p = 0.5, colour jitter with p = 0.8 (brightness, contrast and saturation factors
    in ``[1 - 0.8 s, 1 + 0.8 s]``, hue shift in ``[-0.2 s, 0.2 s]``, in a random order; ``s`` =
    ``strength``) and grayscale with p = 0.2. No Gaussian blur (SimCLR drops it for 32-px
    CIFAR images). Every draw comes from ``generator`` (torch's global stream when None), so a
    seeded generator gives the same view."""

    def __init__(self, min_scale: float = 0.08, strength: float = 0.5) -> None:
        if not 0 < min_scale <= 1:
            raise DataError(f"min_scale={min_scale} must be in (0, 1]")
        if strength < 0:
            raise DataError(f"jitter strength={strength} must be >= 0")
        self.min_scale = min_scale
        self.strength = strength

    def _uniform(self, low: float, high: float, g: torch.Generator | None) -> float:
        return low + (high - low) * float(torch.rand(1, generator=g))

    def _crop_box(self, h: int, w: int, g: torch.Generator | None) -> tuple[int, int, int, int]:
        area = h * w
        log_ratio = (math.log(3 / 4), math.log(4 / 3))
        for _ in range(10):  # torchvision's RandomResizedCrop: 10 tries, then a central crop
            target = area * self._uniform(self.min_scale, 1.0, g)
            ratio = math.exp(self._uniform(*log_ratio, g))
            cw = round(math.sqrt(target * ratio))
            ch = round(math.sqrt(target / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
                left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
                return top, left, ch, cw
        side = min(h, w)
        return (h - side) // 2, (w - side) // 2, side, side

    def __call__(self, image: Tensor, generator: torch.Generator | None = None) -> Tensor:
        g = generator
        _, h, w = image.shape
        top, left, ch, cw = self._crop_box(h, w, g)
        out = TF.resized_crop(image, top, left, ch, cw, [h, w], antialias=True)
        if float(torch.rand(1, generator=g)) < 0.5:
            out = TF.horizontal_flip(out)
        if float(torch.rand(1, generator=g)) < 0.8:
            s = self.strength
            factors = [self._uniform(max(0.0, 1 - 0.8 * s), 1 + 0.8 * s, g) for _ in range(3)]
            hue = self._uniform(-0.2 * s, 0.2 * s, g)
            for k in torch.randperm(4, generator=g).tolist():
                if k == 0:
                    out = TF.adjust_brightness(out, factors[0])
                elif k == 1:
                    out = TF.adjust_contrast(out, factors[1])
                elif k == 2:
                    out = TF.adjust_saturation(out, factors[2])
                else:
                    out = TF.adjust_hue(out, hue)
        if float(torch.rand(1, generator=g)) < 0.2:
            out = TF.rgb_to_grayscale(out, num_output_channels=3)
        return out.clamp(0.0, 1.0)

    def __repr__(self) -> str:
        return f"SimCLRAugment(min_scale={self.min_scale}, strength={self.strength})"


class TwoViews(Dataset[tuple[Tensor, Tensor]]):
    """``(view_1, view_2)`` of item ``i`` of ``base`` (whose items are ``(image, label)``), two
    independent draws of ``augment``."""

    def __init__(self, base: Dataset, augment: SimCLRAugment) -> None:
        self.base = base
        self.augment = augment

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, _ = self.base[index]
        return self.augment(image), self.augment(image)
