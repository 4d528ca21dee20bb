"""The pool of an active-learning run: which images are labelled, with labels read only when an
image is acquired, and one pass of the classifiers over a batch giving everything the
acquisition functions and the evaluation need."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from introspect.data.samplers import block_bounds
from introspect.models.stage2 import IntrospectiveClassifier
from introspect.uncertainty.mc_dropout import MCDropout


class _Images(Dataset):
    """The images of ``base`` at ``indices``, without their labels."""

    def __init__(self, base: Dataset, indices: Sequence[int]) -> None:
        self.base, self.indices = base, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.base[self.indices[i]][0]


class _Labelled(Dataset):
    """``(image, label)`` of ``base`` at ``indices`` with the labels read at acquisition."""

    def __init__(self, base: Dataset, indices: Sequence[int], labels: Sequence[int]) -> None:
        self.base, self.indices, self.labels = base, list(indices), list(labels)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base[self.indices[i]][0], torch.tensor(self.labels[i])


class LabelPool:
    """Indices of ``dataset`` split into labelled and unlabelled; a label is read from
    ``dataset`` only by ``label`` (at acquisition), never for an unlabelled image."""

    def __init__(self, dataset: Dataset, initial: Sequence[int]) -> None:
        self.dataset = dataset
        self.size = len(dataset)  # type: ignore[arg-type]
        self.labelled: list[int] = []
        self.labels: list[int] = []
        self.unlabelled: list[int] = list(range(self.size))
        self.label(initial)

    def label(self, indices: Sequence[int]) -> None:
        """Move ``indices`` (dataset positions) from the unlabelled to the labelled images,
        reading their labels."""
        new = [int(i) for i in indices]
        if len(set(new)) != len(new) or set(new) & set(self.labelled):
            raise ValueError("an image is acquired twice")
        outside = [i for i in new if not 0 <= i < self.size]
        if outside:
            raise ValueError(f"indices {outside[:5]} are not in the pool of {self.size} images")
        for i in new:
            self.labels.append(int(self.dataset[i][1]))
        self.labelled += new
        taken = set(new)
        self.unlabelled = [i for i in self.unlabelled if i not in taken]

    def copy(self) -> LabelPool:
        """An independent pool in the same state (labels already read are not read again)."""
        twin = LabelPool.__new__(LabelPool)
        twin.dataset, twin.size = self.dataset, self.size
        twin.labelled, twin.labels = list(self.labelled), list(self.labels)
        twin.unlabelled = list(self.unlabelled)
        return twin

    def labelled_dataset(self) -> Dataset:
        """``(image, label)`` pairs of the labelled images, in acquisition order."""
        return _Labelled(self.dataset, self.labelled, self.labels)

    def unlabelled_images(self) -> Dataset:
        """The unlabelled images (no labels), in ``self.unlabelled`` order."""
        return _Images(self.dataset, self.unlabelled)


def initial_indices(pool_size: int, count: int, *, seed: int) -> list[int]:
    """``count`` pool positions drawn uniformly without replacement (no label is looked at)."""
    if not 0 < count <= pool_size:
        raise ValueError(f"cannot label {count} of {pool_size} pool images initially")
    gen = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(pool_size, generator=gen)[:count].tolist())


def shard_indices(num_items: int, rank: int, world_size: int) -> range:
    """The positions process ``rank`` scores: its contiguous block of ``range(num_items)``; the
    blocks of all ranks partition the items exactly (``data.samplers.block_bounds``)."""
    return range(*block_bounds(num_items, rank, world_size))


@torch.no_grad()
def batch_outputs(
    backbone: nn.Module,
    head: IntrospectiveClassifier,
    images: torch.Tensor,
    *,
    mc: MCDropout | None = None,
    key: int = 0,
) -> dict[str, torch.Tensor]:
    """Outputs of both classifiers on ``images`` from one backbone pass.

    ``ff_logits``/``ff_hidden``: the feed-forward network's logits and head input ``h``;
    ``int_logits``/``int_hidden``: the introspective head's logits and the input of its last
    linear layer; with ``mc``, ``ff_mc``/``int_mc`` ``(B, S, N)``: MC-dropout logits with dropout
    at the input of each last linear layer (from the same pass; ``key`` varies the masks).
    """
    raw, h, logits = head.features_with_outputs(images)
    int_logits, int_hidden = head.classify_with_hidden(raw)
    out = {
        "ff_logits": logits,
        "ff_hidden": h.flatten(1),
        "int_logits": int_logits,
        "int_hidden": int_hidden,
    }
    if mc is not None:
        linear = backbone.head
        last = head.head[-1]
        assert isinstance(linear, nn.Linear) and isinstance(last, nn.Linear)
        ff = mc.sample_logits(linear, h, penultimate=h.flatten(1), head=linear, key=key)
        mine = mc.sample_logits(last, int_hidden, penultimate=int_hidden, head=last, key=key)
        out["ff_mc"], out["int_mc"] = ff.transpose(0, 1), mine.transpose(0, 1)
    return {k: v.detach().cpu() for k, v in out.items()}
