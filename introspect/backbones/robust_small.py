"""Small adversarially trained CIFAR-10 models (PGD, L-inf 2/255) of a verification benchmark.

Registered as ``robust_resnet4b`` (``resnet4b.pth``) and ``robust_cnn_a``
(``cifar_cnn_a_adv.model``), each with the input normalization it was trained with; parameter
names match the released files. Both end in a two-layer head (... -> 100 -> ReLU -> N), so the
introspective gradient is taken at the last linear layer, whose input is the 100-d hidden vector.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PlainBlock(nn.Module):
    """Residual block without BatchNorm: conv3x3 -> ReLU -> conv3x3, plus shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output."""
        out = self.conv2(F.relu(self.conv1(x)))
        return F.relu(out + self.shortcut(x))


class ResNet4b(nn.Module):
    """``resnet4b.pth``: stride-2 stem conv, 2 stages x 2 blocks of 32 channels, 512->100->N."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.layer1 = nn.Sequential(PlainBlock(16, 32, 2), PlainBlock(32, 32, 1))
        self.layer2 = nn.Sequential(PlainBlock(32, 32, 2), PlainBlock(32, 32, 1))
        self.linear1 = nn.Linear(32 * 4 * 4, 100)
        self.linear2 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for normalized 32x32 images."""
        out = self.layer2(self.layer1(F.relu(self.conv1(x))))
        return self.linear2(F.relu(self.linear1(out.flatten(1))))


def cnn_a(num_classes: int = 10) -> nn.Sequential:
    """``cifar_cnn_a_adv.model``: two stride-2 4x4 convs (16, 32 channels), 2048->100->N."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


# Input normalization (images in [0, 1]) each released model was trained with.
RESNET4B_MEAN, RESNET4B_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
CNN_A_MEAN = tuple(v / 255 for v in (125.3, 123.0, 113.9))
CNN_A_STD = tuple(v / 255 for v in (63.0, 62.1, 66.7))
