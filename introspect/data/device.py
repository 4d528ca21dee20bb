"""Stage-1 training batches from one tensor held on the training device (the fast GPU path):
the train split is read once, then every epoch is shuffled, sliced and augmented (random crop
and flip, Gaussian noise) on that device, with no per-image work on the CPU."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from introspect.data.augment import crop_flip, standard_padding
from introspect.data.errors import DataError

# The augmentations DeviceBatches applies itself.
DEVICE_AUGMENTATIONS = ("standard", "gaussian_noise")


def load_split(
    dataset: Dataset, device: torch.device, batch_size: int = 1024
) -> tuple[Tensor, Tensor]:
    """All ``(images, labels)`` of ``dataset`` stacked into two tensors on ``device``."""
    images, labels = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        images.append(x.to(device))
        labels.append(y.to(device))
    return torch.cat(images), torch.cat(labels)


class DeviceBatches:
    """Shuffled training batches ``(images, labels)`` of ``images``/``labels`` (already on
    their device), each augmented there by ``augment`` in order: ``standard`` (random crop of
    the zero-padded image, horizontal flip with p = 0.5) and ``gaussian_noise`` (N(0,
    ``noise_std``^2), clipped to [0, 1]). The draws come from torch's global generator of the
    images' device (the permutation from the CPU one), so a seeded run repeats itself.
    The last incomplete batch is kept."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        batch_size: int,
        augment: Sequence[str] = (),
        noise_std: float = 0.1,
    ) -> None:
        unknown = [a for a in augment if a not in DEVICE_AUGMENTATIONS]
        if unknown:
            raise DataError(
                f"augmentation {', '.join(unknown)} is not applied on the device (only "
                f"{', '.join(DEVICE_AUGMENTATIONS)}); set data.on_device=false"
            )
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.augment = tuple(augment)
        self.noise_std = noise_std
        self.pad = standard_padding(images.shape[-1])

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def augment_batch(self, images: Tensor) -> Tensor:
        """``images`` (B, C, H, W) after the configured augmentations."""
        b, _, h, w = images.shape
        dev = images.device
        for name in self.augment:
            if name == "standard":
                p = self.pad
                row = torch.randint(0, 2 * p + 1, (b,), device=dev)
                col = torch.randint(0, 2 * p + 1, (b,), device=dev)
                flip = torch.rand(b, device=dev) < 0.5
                images = crop_flip(images, row, col, flip, size=h, pad=p)
            else:
                images = (images + self.noise_std * torch.randn_like(images)).clamp_(0.0, 1.0)
        return images

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(len(self.labels)).to(self.labels.device)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self.augment_batch(self.images[idx]), self.labels[idx]
