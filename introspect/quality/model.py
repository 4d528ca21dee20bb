"""The quality model: a CNN trunk from the backbone registry with a one-score regression head,
trained on random patches of (image, score) pairs and applied to whole images."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from introspect.backbones import Backbone
from introspect.quality.dataset import QualitySet


class QualityModel(nn.Module):
    """``score(x) = mean + std * head(trunk(x))``: the backbone (fully convolutional trunk, global
    pooling, ``nn.Linear`` head with one output) predicts the standardized score, rescaled to
    the database's units by the buffers ``mean``/``std`` (the training scores' statistics).

    Applied to a whole image, global average pooling makes the score the mean of the local
    estimates of the trunk's receptive fields (the patch averaging of DeepIQA).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, backbone: Backbone, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        if backbone.num_classes != 1:
            raise ValueError(
                f"a quality model needs a backbone with one output, got {backbone.num_classes}"
            )
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    @property
    def head(self) -> nn.Linear:
        """The regression head (the backbone's last linear layer)."""
        return self.backbone.head

    def standardized(self, x: torch.Tensor) -> torch.Tensor:
        """The standardized scores ``(B, 1)`` of images ``x`` in ``[0, 1]``."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quality scores ``(B, 1)`` in the database's units."""
        return self.backbone(x) * self.std + self.mean


@dataclass(frozen=True)
class QualityTraining:
    """Recipe of ``train_quality_model``: epochs over the training images, each image giving
    ``patches`` random ``patch_size`` crops labelled with its score per epoch, Adam with
    ``lr``/``weight_decay`` and a cosine schedule, ``batch_size`` images per step."""

    epochs: int = 15
    batch_size: int = 16
    patch_size: int = 64
    patches: int = 2
    lr: float = 3e-3
    weight_decay: float = 1e-4


def random_patches(
    images: torch.Tensor, size: int, count: int, generator: torch.Generator
) -> torch.Tensor:
    """``count`` random ``size x size`` crops of every image: ``(B * count, C, size, size)``
    ordered image by image."""
    b, c, h, w = images.shape
    if size > min(h, w):
        raise ValueError(f"patch size {size} exceeds the image size {h}x{w}; lower it")
    top = torch.randint(0, h - size + 1, (b, count), generator=generator)
    left = torch.randint(0, w - size + 1, (b, count), generator=generator)
    rows = top[..., None] + torch.arange(size)  # (B, P, size)
    cols = left[..., None] + torch.arange(size)
    idx_b = torch.arange(b)[:, None, None, None]
    crops = images.permute(0, 2, 3, 1)[idx_b, rows[..., :, None], cols[..., None, :]]
    return crops.reshape(b * count, size, size, c).permute(0, 3, 1, 2).contiguous()


def train_quality_model(
    model: QualityModel,
    dataset: QualitySet,
    indices: Sequence[int],
    recipe: QualityTraining,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[float]:
    """Fit ``model`` to the scores of ``dataset[indices]`` (standardized with their mean and
    std, which become the model's ``mean``/``std``); returns the mean loss of every epoch."""
    scores = dataset.scores[np.asarray(indices)]
    std = float(scores.std()) if len(scores) > 1 and scores.std() > 0 else 1.0
    model.mean.fill_(float(scores.mean()))
    model.std.fill_(std)
    targets = torch.as_tensor((scores - scores.mean()) / std, dtype=torch.float32)
    model.to(device).train()
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps = recipe.epochs * math.ceil(len(indices) / recipe.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    losses = []
    order = np.asarray(indices)
    for _ in range(recipe.epochs):
        perm = torch.randperm(len(order), generator=gen).numpy()
        total, seen = 0.0, 0
        for start in range(0, len(perm), recipe.batch_size):
            chunk = perm[start : start + recipe.batch_size]
            images = dataset.images(order[chunk].tolist())
            crops = random_patches(images, recipe.patch_size, recipe.patches, gen).to(device)
            y = targets[chunk].repeat_interleave(recipe.patches).to(device)
            loss = F.mse_loss(model.standardized(crops)[:, 0], y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(chunk)
            seen += len(chunk)
        losses.append(total / max(seen, 1))
    model.eval()
    return losses
