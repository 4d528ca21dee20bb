"""Exact partitions of a dataset across the processes of a multi-process run, and seeded subsets."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler, Subset

from introspect.data.seeding import derive_seed


def block_bounds(num_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(start, stop)`` of process ``rank``'s block when ``range(num_items)`` is cut into
    ``world_size`` consecutive blocks whose sizes differ by at most one (rank order = item order).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not a process of a world of size {world_size}")
    if num_items < 0:
        raise ValueError(f"num_items={num_items} must be >= 0")
    return rank * num_items // world_size, (rank + 1) * num_items // world_size


class ContiguousSampler(Sampler[int]):
    """The indices of one process's contiguous block of a dataset of ``num_samples`` items.

    The blocks of ranks ``0 .. world_size - 1`` partition ``range(num_samples)`` exactly, in
    order: no index is repeated to pad the blocks to equal length (unlike
    ``DistributedSampler``), so metrics summed over processes count every sample once. A block
    may be empty when there are fewer samples than processes.
    """

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1) -> None:
        self.start, self.stop = block_bounds(num_samples, rank, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


def seeded_subset(dataset: Dataset, max_samples: int | None, seed: int, name: str) -> Dataset:
    """``dataset`` itself, or at most ``max_samples`` of its items: a subset seeded by ``seed`` and
    ``name``, in index order (so corrupted cells are read chunk by chunk)."""
    n = len(dataset)  # type: ignore[arg-type]
    if max_samples is None or n <= max_samples:
        return dataset
    g = torch.Generator().manual_seed(derive_seed(seed, name))
    keep = torch.randperm(n, generator=g)[:max_samples].sort().values
    return Subset(dataset, keep.tolist())
