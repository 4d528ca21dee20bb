"""SimCLR (Chen et al. 2020): contrastive pre-training of a backbone's trunk with a projection
MLP and the NT-Xent loss, as a LightningModule whose batches are pairs of views."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from introspect.backbones import Backbone
from introspect.models.optim import build_optimizer


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """The NT-Xent loss of B positive pairs ``(z1[i], z2[i])`` (each (B, d)): for each of the
    2B embeddings, the cross-entropy of picking its pair among the other 2B - 1 by cosine
    similarity over ``temperature``; mean over the 2B anchors. Computed in at least float32
    (also under bf16 autocast)."""
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"z1 and z2 must both be (B, d), got {tuple(z1.shape)}, {tuple(z2.shape)}")
    b = z1.shape[0]
    z = torch.cat([z1, z2])
    z = F.normalize(z if z.dtype == torch.float64 else z.float(), dim=1)
    logits = z @ z.t() / temperature
    logits = logits.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), -torch.inf)
    positives = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    return F.cross_entropy(logits, positives)


class ProjectionHead(nn.Sequential):
    """SimCLR's projection g: Linear(d, d) -> BatchNorm -> ReLU -> Linear(d, ``out``)."""

    def __init__(self, features: int, out: int) -> None:
        super().__init__(
            nn.Linear(features, features, bias=False),
            nn.BatchNorm1d(features),
            nn.ReLU(inplace=True),
            nn.Linear(features, out),
        )


class SimCLRPretraining(L.LightningModule):
    """Trains ``backbone``'s trunk (everything before its head, which stays untouched) and a
    ``ProjectionHead`` with NT-Xent on batches ``(view_1, view_2)``; ``optim`` as in
    ``models.optim.build_optimizer``."""

    def __init__(
        self,
        backbone: Backbone,
        *,
        projection_dim: int,
        temperature: float,
        optim: Mapping[str, Any],
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone
        self.projection = ProjectionHead(backbone.feature_dim, projection_dim)
        self.temperature = temperature
        self.optim = dict(optim)
        self.channels_last = channels_last

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Projections g(h) of the trunk's features h of ``images`` (in [0, 1])."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        _, features = self.backbone.forward_features(images)
        return self.projection(features)

    def on_fit_start(self) -> None:
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def on_train_epoch_start(self) -> None:
        self.train()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _idx: int) -> torch.Tensor:
        v1, v2 = batch
        z = self.embed(torch.cat([v1, v2]))
        loss = nt_xent(z[: len(v1)], z[len(v1) :], self.temperature)
        self.log("simclr/train/loss", loss, prog_bar=True, batch_size=len(v1))
        return loss

    def configure_optimizers(self) -> Any:
        head = set(map(id, self.backbone.head.parameters()))
        params = [p for p in self.parameters() if id(p) not in head]
        return build_optimizer(params, self.optim, self.trainer)
