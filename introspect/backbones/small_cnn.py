"""A small BatchNorm CNN for tiny images (8x8 scikit-learn digits up to 32x32)."""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """(conv3x3-BN-ReLU) x2 -> 2x2 max-pool -> conv3x3-BN-ReLU -> global average pool -> linear.

    With the default widths (32, 64) it has about 30k parameters; any input size >= 2x2 works.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, width),
            _conv_bn_relu(width, width),
            nn.MaxPool2d(2),
            _conv_bn_relu(width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for normalized images ``x`` of shape ``(B, in_channels, H, W)``."""
        return self.classifier(self.features(x))
