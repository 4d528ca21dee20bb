"""Stage 2 of the quality task: introspective ("why q, rather than q'?") and control features
of a trained quality model, and the MLP regressors trained on them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from introspect.gradients.regression import extract_regression_with_outputs
from introspect.models.mlp import MLP
from introspect.quality.dataset import QualitySet


def contrast_levels(fractions: Sequence[float], train_scores: np.ndarray) -> np.ndarray:
    """Contrast scores q' from fractions of the training scores' range (0: lowest, 1: highest)."""
    low, high = float(np.min(train_scores)), float(np.max(train_scores))
    return low + np.asarray(fractions, dtype=np.float64) * (high - low)


@dataclass
class QualityFeatures:
    """Per-image outputs of one pass of the quality model over a set of images."""

    introspective: torch.Tensor  # (N, K * D [+ K]) unnormalized gradient features
    penultimate: torch.Tensor  # (N, D) head inputs h (the control head's input)
    scores: torch.Tensor  # (N,) the model's (feed-forward) scores


def quality_features(
    model: nn.Module,
    dataset: QualitySet,
    indices: Sequence[int],
    contrasts: Sequence[float],
    *,
    batch_size: int = 32,
    include_bias: bool = False,
    device: torch.device | str = "cpu",
) -> QualityFeatures:
    """Introspective features (unnormalized), head inputs and scores of ``dataset[indices]``."""
    model.eval()
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    order = list(indices)
    for start in range(0, len(order), batch_size):
        images = dataset.images(order[start : start + batch_size]).to(device)
        feats, h, scores = extract_regression_with_outputs(
            model, images, contrasts, include_bias=include_bias, normalize="none"
        )
        parts.append((feats.cpu(), h.reshape(h.shape[0], -1).cpu(), scores[:, 0].cpu()))
    return QualityFeatures(*(torch.cat(p) for p in zip(*parts, strict=True)))


@dataclass(frozen=True)
class RegressorRecipe:
    """The stage-2 MLP and its training (the stage-2 head settings, with an MSE loss)."""

    hidden: tuple[int, ...] = (256, 128)
    dropout: float = 0.1
    activation: str = "relu"
    epochs: int = 40
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4


class Regressor(nn.Module):
    """An MLP predicting a score from feature rows, trained on standardized inputs and targets;
    ``forward`` takes raw feature rows and returns scores in target units ``(N,)``."""

    def __init__(self, in_dim: int, recipe: RegressorRecipe) -> None:
        super().__init__()
        self.mlp = MLP(
            in_dim, 1, recipe.hidden, dropout=recipe.dropout, activation=recipe.activation
        )
        self.register_buffer("x_mean", torch.zeros(in_dim))
        self.register_buffer("x_std", torch.ones(in_dim))
        self.register_buffer("y_mean", torch.tensor(0.0))
        self.register_buffer("y_std", torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores of the feature rows ``x``."""
        z = (x.to(self.x_mean.dtype) - self.x_mean) / self.x_std
        return self.mlp(z)[:, 0] * self.y_std + self.y_mean


def fit_regressor(
    x: torch.Tensor, y: torch.Tensor, recipe: RegressorRecipe, *, seed: int = 0
) -> Regressor:
    """Train a ``Regressor`` on ``(x, y)`` with AdamW, a cosine schedule and the MSE loss."""
    torch.manual_seed(seed)
    x, y = x.float(), y.float()
    model = Regressor(x.shape[1], recipe)
    model.x_mean.copy_(x.mean(0))
    model.x_std.copy_(x.std(0).clamp_min(1e-6) if len(x) > 1 else torch.ones(x.shape[1]))
    model.y_mean.fill_(float(y.mean()))
    model.y_std.fill_(float(y.std()) if len(y) > 1 and float(y.std()) > 0 else 1.0)
    xs = ((x - model.x_mean) / model.x_std).float()
    ys = ((y - model.y_mean) / model.y_std).float()
    optimizer = torch.optim.AdamW(
        model.mlp.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
    )
    steps_per_epoch = -(-len(xs) // recipe.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, recipe.epochs * steps_per_epoch
    )
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(recipe.epochs):
        perm = torch.randperm(len(xs), generator=gen)
        for start in range(0, len(xs), recipe.batch_size):
            batch = perm[start : start + recipe.batch_size]
            loss = F.mse_loss(model.mlp(xs[batch])[:, 0], ys[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()
