"""Batches of in-memory rows by index slicing: one gather per batch instead of a per-item
``TensorDataset`` loader, in the same order that loader would draw."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch


class IndexedBatches:
    """Batches ``(rows[i] for rows in arrays)`` of ``batch_size`` indices ``i``.

    ``arrays`` are tensors, or objects indexed like them (``len`` and ``[index tensor]``, e.g.
    gradient factors), with one row per sample. The order is the one of
    ``DataLoader(TensorDataset(*arrays), batch_size, shuffle)`` drawing from the global torch
    generator in one process (so a seeded run trains on the same batches), and of the
    ``DistributedSampler(seed=seed)`` Lightning puts in that loader when ``world > 1``
    (epoch ``e`` is the ``e``-th pass over the batches). Unshuffled batches are views.
    """

    def __init__(
        self,
        *arrays: Any,
        batch_size: int,
        shuffle: bool = False,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
    ) -> None:
        if not arrays or len({len(a) for a in arrays}) != 1:
            raise ValueError("IndexedBatches needs arrays with the same number of rows")
        if batch_size < 1 or not 0 <= rank < world:
            raise ValueError(f"batch_size={batch_size}, rank={rank}, world={world}")
        self.arrays, self.batch_size, self.shuffle = arrays, batch_size, shuffle
        self.rank, self.world, self.seed = rank, world, seed
        self.epoch = 0

    @property
    def num_rows(self) -> int:
        """Rows one pass yields on this process."""
        n = len(self.arrays[0])
        return n if self.world == 1 else math.ceil(n / self.world)

    def __len__(self) -> int:
        return math.ceil(self.num_rows / self.batch_size)

    def _order(self) -> Any:
        n = len(self.arrays[0])
        if self.world > 1:
            if self.shuffle:
                generator = torch.Generator().manual_seed(self.seed + self.epoch)
                order = torch.randperm(n, generator=generator)
            else:
                order = torch.arange(n)
            padded = self.num_rows * self.world
            order = torch.cat([order, order[: padded - n]]) if padded > n else order
            return order[self.rank : padded : self.world]
        # A DataLoader draws its workers' base seed, then its RandomSampler's seed.
        torch.empty((), dtype=torch.int64).random_()
        if not self.shuffle:
            return None
        seed = int(torch.empty((), dtype=torch.int64).random_().item())
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed))

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        """The next pass's batches; its order is drawn here, not at the first batch."""
        order = self._order()
        self.epoch += 1
        return self._batches(order)

    def _batches(self, order: Any) -> Iterator[tuple[Any, ...]]:
        for start in range(0, self.num_rows, self.batch_size):
            if order is None:
                yield tuple(a[start : start + self.batch_size] for a in self.arrays)
            else:
                index = order[start : start + self.batch_size]
                yield tuple(a[index] for a in self.arrays)


class ZippedBatches:
    """One pass over several batch sources at once: step ``k`` yields the ``k``-th batch of each.

    ``streams`` (one context per source, e.g. ``RngStream``) are entered while each source
    starts its pass, so each draws its order from its own random stream.
    """

    def __init__(
        self,
        sources: Sequence[Iterable[Any]],
        streams: Sequence[AbstractContextManager[Any]] | None = None,
    ) -> None:
        if not sources or len({len(s) for s in sources}) != 1:  # type: ignore[arg-type]
            raise ValueError("ZippedBatches needs sources with the same number of batches")
        if streams is not None and len(streams) != len(sources):
            raise ValueError(f"{len(streams)} streams for {len(sources)} sources")
        self.sources = list(sources)
        self.streams = list(streams) if streams is not None else None

    def __len__(self) -> int:
        return len(self.sources[0])  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        iterators = []
        for i, source in enumerate(self.sources):
            with self.streams[i] if self.streams is not None else nullcontext():
                iterators.append(iter(source))
        return zip(*iterators, strict=True)
