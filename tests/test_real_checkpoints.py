"""The released checkpoints in ``../shared/data`` load and reach their published accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from introspect.backbones import load_backbone

ROBUST_RESNET_NORM = {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2471, 0.2435, 0.2616)}

# name, checkpoint, options, accuracy (%) on cifar10-test-lossless-1017 (as published with the
# checkpoints),
# head path, feature dimension
CASES: list[tuple[str, str, dict[str, Any], float, str, int]] = [
    ("cifar_resnet20", "cifar_resnet/resnet20-12fca82f.th", {}, 91.64, "net.linear", 64),
    ("cifar_resnet56", "cifar_resnet/resnet56-4bfd9763.th", {}, 92.72, "net.linear", 64),
    # Registered names carry their normalization (the published values) ...
    ("robust_resnet4b", "robust_small/resnet4b.pth", {}, 77.29, "net.linear2", 100),
    ("robust_cnn_a", "robust_small/cifar_cnn_a_adv.model", {}, 66.67, "net.7", 100),
    # ... and the import-path route with the normalization given explicitly.
    (
        "introspect.backbones.robust_small:ResNet4b",
        "robust_small/resnet4b.pth",
        ROBUST_RESNET_NORM,
        77.29,
        "net.linear2",
        100,
    ),
]


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("name, file, options, accuracy, head_path, dim", CASES)
def test_released_checkpoint_accuracy(
    shared_data: Path,
    name: str,
    file: str,
    options: dict[str, Any],
    accuracy: float,
    head_path: str,
    dim: int,
) -> None:
    backbone = load_backbone(
        name, shared_data / "checkpoints" / file, num_classes=10, **options
    ).eval()
    assert backbone.head_path == head_path and backbone.feature_dim == dim
    data = np.load(shared_data / "cifar10-test-lossless-1017.npz")
    x = torch.from_numpy(data["x"]).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(data["y"])
    with torch.no_grad():
        predictions = torch.cat([backbone(batch).argmax(1) for batch in x.split(256)])
    assert abs(100 * (predictions == y).double().mean().item() - accuracy) <= 0.1
