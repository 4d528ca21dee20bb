"""Stage 1: the feed-forward classifier, trained or fine-tuned as a LightningModule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from introspect.attacks import pgd
from introspect.models.optim import build_optimizer


def jsd_consistency(logits: torch.Tensor) -> torch.Tensor:
    """AugMix's Jensen-Shannon consistency (Hendrycks et al. 2020) of ``logits`` (K, B, C):
    the mean over the K softmax distributions of KL(p_k || M), M their mixture (clamped to
    [1e-7, 1] before its log, as the paper's code), averaged over the batch."""
    p = logits.float().softmax(-1)
    log_m = p.mean(0).clamp(1e-7, 1.0).log()
    kl = (p * (p.clamp_min(1e-30).log() - log_m)).sum(-1)  # (K, B)
    return kl.mean(0).mean()


class FeedForwardClassifier(L.LightningModule):
    """Cross-entropy training of a backbone (images in ``[0, 1]`` -> logits).

    ``optim`` holds ``name`` (sgd | adamw), ``lr``, ``momentum``, ``nesterov``, ``weight_decay``
    and ``schedule`` (cosine | none); ``adversarial`` (optional) holds ``enabled``, ``epsilon``,
    ``step_size``, ``steps`` and ``random_start`` for PGD training: each training batch is replaced
    by its adversarial version, crafted with the network in eval mode. ``freeze_trunk`` trains
    only the backbone's head (linear evaluation: the trunk's weights and batch-norm statistics
    stay as they are); ``channels_last`` trains in channels-last memory format. Training
    batches of shape (B, 3, C, H, W) are AugMix triplets (clean, AugMix, AugMix): the loss is
    the cross-entropy of the clean images plus ``jsd_weight`` x ``jsd_consistency``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_classes: int,
        optim: Mapping[str, Any],
        label_smoothing: float = 0.0,
        adversarial: Mapping[str, Any] | None = None,
        freeze_trunk: bool = False,
        channels_last: bool = False,
        jsd_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone
        self.optim = dict(optim)
        self.label_smoothing = label_smoothing
        self.adversarial = dict(adversarial) if adversarial and adversarial.get("enabled") else None
        self.freeze_trunk = freeze_trunk
        self.jsd_weight = jsd_weight
        self.channels_last = channels_last
        if freeze_trunk:
            head = set(map(id, backbone.head.parameters()))  # type: ignore[union-attr, operator]
            for p in backbone.parameters():
                p.requires_grad_(id(p) in head)
        metrics = MetricCollection({"acc": MulticlassAccuracy(num_classes, average="micro")})
        self.train_metrics = metrics.clone(prefix="feedforward/train/")
        self.val_metrics = metrics.clone(prefix="feedforward/val/")
        self.test_metrics = metrics.clone(prefix="feedforward/test/")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of ``images`` (RGB in ``[0, 1]``)."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.backbone(images)

    def on_fit_start(self) -> None:
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def _train_mode(self) -> None:
        """The backbone in training mode, but for a frozen trunk (eval mode, head trained)."""
        self.backbone.train()
        if self.freeze_trunk:
            self.backbone.eval()

    def on_train_epoch_start(self) -> None:
        self._train_mode()

    def _adversarial(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        assert self.adversarial is not None
        self.backbone.eval()
        try:
            return pgd(
                self.backbone,
                images,
                labels,
                eps=self.adversarial["epsilon"],
                alpha=self.adversarial["step_size"],
                steps=self.adversarial["steps"],
                random_start=self.adversarial.get("random_start", True),
                generator=torch.default_generator,  # the run's seeded global RNG
            )
        finally:
            self._train_mode()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _idx: int) -> torch.Tensor:
        images, labels = batch
        triplets = images.ndim == 5
        if triplets:  # (clean, AugMix, AugMix) per image: one pass over all three
            b = len(labels)
            all_logits = self(images.transpose(0, 1).flatten(0, 1)).view(3, b, -1)
            logits = all_logits[0]
        else:
            if self.adversarial is not None:
                images = self._adversarial(images, labels)
            logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        if triplets:
            loss = loss + self.jsd_weight * jsd_consistency(all_logits)
        self.train_metrics.update(logits, labels)
        self.log("feedforward/train/loss", loss, prog_bar=True, batch_size=len(labels))
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def _eval_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], metrics: MetricCollection, split: str
    ) -> None:
        images, labels = batch
        logits = self(images)
        self.log(
            f"feedforward/{split}/loss",
            F.cross_entropy(logits, labels),
            batch_size=len(labels),
            sync_dist=True,
        )
        metrics.update(logits, labels)
        self.log_dict(
            metrics, on_step=False, on_epoch=True, prog_bar=split == "val", batch_size=len(labels)
        )

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], _idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def configure_optimizers(self) -> Any:
        return build_optimizer(self.backbone.parameters(), self.optim, self.trainer)
