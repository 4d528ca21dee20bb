"""Stage-2 heads that share a training recipe, trained in one pass over their batches."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from introspect.models.optim import build_optimizer
from introspect.models.stage2 import StageTwoClassifier


class HeadPair(L.LightningModule):
    """Heads with the same recipe (epochs, batch size, optimizer, schedule) trained together,
    each ending with the weights it would have after training alone.

    A batch is one ``(features, labels)`` per head (e.g. from ``data.batches.ZippedBatches``).
    Each head has its own optimizer and schedule (a step of one never touches the other's
    weights or moments; without gradient clipping, one optimizer over all heads' parameters
    does the same in one call) and its own random stream (``streams[i]``, entered around its
    forward pass: the dropout masks it would draw alone); one backward pass serves all heads
    (their parameters are disjoint, so each gradient is that of its own loss). What is logged
    has the names and values of ``StageTwoClassifier``'s own steps: the training loss on the
    steps the trainer writes and on the last of each epoch, training accuracy per epoch,
    validation loss and accuracy.
    """

    def __init__(
        self,
        heads: Sequence[StageTwoClassifier],
        streams: Sequence[AbstractContextManager[Any]],
        *,
        gradient_clip_val: float | None = None,
    ) -> None:
        """``gradient_clip_val``: clip each head's gradient norm as the trainer would clip it
        for a head trained alone (pass it here, not to the trainer)."""
        super().__init__()
        if len(heads) != len(streams) or not heads:
            raise ValueError(f"{len(heads)} heads for {len(streams)} random streams")
        self.heads = nn.ModuleList(heads)
        self.streams = list(streams)
        self.gradient_clip_val = gradient_clip_val
        self.automatic_optimization = False
        # Each head's (predicted class, label) batches of the running epoch.
        self._predicted: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in heads]

    def _heads(self) -> list[StageTwoClassifier]:
        return list(self.heads)  # type: ignore[arg-type]

    def training_step(self, batch: Sequence[tuple[Any, torch.Tensor]], index: int) -> None:
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        total = None
        losses = {}
        for head, stream, (feats, labels), predicted in zip(
            self._heads(), self.streams, batch, self._predicted, strict=True
        ):
            with stream:
                logits = head.classify(feats)
            loss = F.cross_entropy(logits, labels)
            predicted.append((logits.detach().argmax(1), labels))
            losses[f"{head.kind}/train/loss"] = loss.detach()
            total = loss if total is None else total + loss
        for opt in optimizers:
            opt.zero_grad()
        self.manual_backward(total)
        for opt in optimizers:
            if self.gradient_clip_val:
                self.clip_gradients(opt, gradient_clip_val=self.gradient_clip_val)
            opt.step()
        schedulers = self.lr_schedulers()
        if schedulers is not None:
            for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
                scheduler.step()
        # Step values reach the loggers only on logging steps (logging the others is waste) and
        # callbacks at the epoch's end see its last step.
        trainer = self.trainer
        last = index == trainer.num_training_batches - 1
        if last or trainer.fast_dev_run or trainer._logger_connector.should_update_logs:
            self.log_dict(losses, batch_size=len(batch[0][1]))

    def on_train_epoch_end(self) -> None:
        # The training accuracy is a count: its metric is updated once with the epoch's labels.
        for head, predicted in zip(self._heads(), self._predicted, strict=True):
            if predicted:
                classes, labels = (torch.cat([pair[i] for pair in predicted]) for i in (0, 1))
                head.train_metrics.update(classes, labels)
                predicted.clear()
            self.log_dict(head.train_metrics.compute())
            head.train_metrics.reset()

    def validation_step(self, batch: Sequence[tuple[Any, torch.Tensor]], _idx: int) -> None:
        for head, (feats, labels) in zip(self._heads(), batch, strict=True):
            head.validate_batch(feats, labels, logger=self)

    def configure_optimizers(self) -> Any:
        heads = self._heads()
        if not self.gradient_clip_val and all(h.optim == heads[0].optim for h in heads):
            # One optimizer over every head's parameters: the update of each parameter (and the
            # schedule) depends only on its own gradient and state, so this is each head's own
            # optimizer, stepped in one call. Clipping by norm couples parameters: then one each.
            params = [p for h in heads for p in h.head.parameters()]
            return build_optimizer(params, heads[0].optim, self.trainer, fused=True)
        configs = []
        for head in heads:
            built = build_optimizer(head.head.parameters(), head.optim, self.trainer, fused=True)
            configs.append(built if isinstance(built, dict) else {"optimizer": built})
        return configs
