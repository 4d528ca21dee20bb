"""Small networks and data shared by the explanation tests (no test functions here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CIFAR_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


class PoolNet(nn.Module):
    """conv-ReLU -> conv-ReLU (full resolution) -> global average pool -> linear; the last ReLU
    is a module (``relu2``), so its output, the pooled map, can be hooked."""

    def __init__(self, channels: int = 3, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu2(self.conv2(F.relu(self.conv1(x))))
        return self.fc(h.mean(dim=(2, 3)))


class FlatNet(nn.Module):
    """A convolution followed by flatten -> linear: its head does not pool a feature map."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.fc = nn.Linear(2 * size[0] * size[1], 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv(x)).flatten(1))


class HalfMeanModel(nn.Module):
    """Two classes with probabilities ``(s, 1 - s)``, ``s`` the mean of the left half of the
    image (clamped into (0, 1)): only the left half matters for class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Linear(1, 1)  # a parameter, so that devices can be read off

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = x.shape[-1]
        s = x[..., : width // 2].mean(dim=(1, 2, 3)).clamp(1e-6, 1 - 1e-6)
        return torch.stack([s.log(), (1 - s).log()], dim=1)


def cifar_images(shared_data: Path, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` lossless CIFAR-10 test images in [0, 1] and their labels."""
    data = np.load(shared_data / "cifar10-test-lossless-1017.npz")
    images = torch.from_numpy(data["x"][:count]).permute(0, 3, 1, 2).float() / 255
    return images, torch.from_numpy(data["y"][:count]).long()
