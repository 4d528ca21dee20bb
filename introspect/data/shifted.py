"""Evaluation splits under distribution shift: a test split corrupted on the fly, cell by cell,
and the official CIFAR-10-C / CIFAR-100-C arrays.

A cell is one ``<corruption>/<severity>`` pair; ``split_names`` gives the evaluation split names.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from introspect.data.errors import DataError

# Bumped whenever a change to the corruption code changes its outputs, so caches go stale.
CORRUPTION_VERSION = 1


def cell_seed(name: str, severity: int, seed: int) -> int:
    """The seed of one ``<corruption>/<severity>`` cell: stable across runs and machines."""
    return (zlib.crc32(f"{name}/{severity}".encode()) + 1_000_003 * seed) % (2**31 - 1)


class CorruptedDataset(Dataset[tuple[Tensor, Tensor]]):
    """``base`` (a map-style dataset of float images in [0, 1] and labels) with corruption
    ``name`` at ``severity`` applied on the fly, deterministic for ``seed``.

    Images are corrupted in fixed chunks of ``chunk_size`` consecutive indices, chunk ``k`` with
    the cell seed plus ``k``: an item is the same whatever the batch size, shuffling or number of
    loader workers. The last ``keep_chunks`` corrupted chunks stay in memory, so sequential
    reading corrupts each chunk once and memory is bounded by the chunk, not the split.

    ``cache_dir`` stores every corrupted chunk as a float32 file named by a hash of its clean
    pixels, the corruption, severity, seed, chunk position and device type: a cache hit returns
    exactly what would be computed, and changed data never hits a stale file. ``device`` is where
    the corruption runs (use ``"cpu"`` inside loader worker processes); CPU and CUDA random
    streams differ, so the device is part of the result.
    """

    def __init__(
        self,
        base: Dataset,
        name: str,
        severity: int,
        *,
        seed: int = 0,
        chunk_size: int = 256,
        cache_dir: str | os.PathLike[str] | None = None,
        device: torch.device | str = "cpu",
        keep_chunks: int = 2,
    ) -> None:
        from introspect.corruptions.transforms import ALL_NAMES

        if name not in ALL_NAMES:
            raise DataError(f"unknown corruption {name!r}; valid: {', '.join(ALL_NAMES)}")
        if isinstance(severity, bool) or not 1 <= int(severity) <= 5:
            raise DataError(f"severity must lie in 1..5, got {severity!r}")
        if chunk_size < 1 or keep_chunks < 1:
            raise ValueError("chunk_size and keep_chunks must be positive")
        self.base = base
        self.name = name
        self.severity = int(severity)
        self.seed = seed
        self.chunk_size = chunk_size
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.device = torch.device(device)
        self.keep_chunks = keep_chunks
        self._chunks: OrderedDict[int, tuple[Tensor, Tensor]] = OrderedDict()

    @property
    def split_name(self) -> str:
        """``"<corruption>/<severity>"``."""
        return f"{self.name}/{self.severity}"

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        k, offset = divmod(index, self.chunk_size)
        images, labels = self.chunk(k)
        return images[offset], labels[offset]

    def chunk(self, k: int) -> tuple[Tensor, Tensor]:
        """Corrupted images (n, 3, H, W) on the CPU and labels (n,) of chunk ``k``."""
        if k in self._chunks:
            self._chunks.move_to_end(k)
            return self._chunks[k]
        start = k * self.chunk_size
        stop = min(start + self.chunk_size, len(self))
        if start >= stop:
            raise IndexError(f"chunk {k} out of range")
        items = [self.base[i] for i in range(start, stop)]
        clean = torch.stack([img for img, _ in items]).float()
        labels = torch.as_tensor([int(lbl) for _, lbl in items], dtype=torch.long)
        images = self._cached(k, clean)
        self._chunks[k] = (images, labels)
        while len(self._chunks) > self.keep_chunks:
            self._chunks.popitem(last=False)
        return images, labels

    def _compute(self, k: int, clean: Tensor) -> Tensor:
        from introspect.corruptions.transforms import corrupt

        seed = cell_seed(self.name, self.severity, self.seed) + k
        return corrupt(clean.to(self.device), self.name, self.severity, seed=seed).cpu()

    def _cached(self, k: int, clean: Tensor) -> Tensor:
        if self.cache_dir is None:
            return self._compute(k, clean)
        digest = hashlib.sha256(clean.contiguous().numpy().tobytes())
        digest.update(
            f"{self.name}/{self.severity}/{self.seed}/{k}/{self.chunk_size}/"
            f"{self.device.type}/v{CORRUPTION_VERSION}".encode()
        )
        path = self.cache_dir / self.name / str(self.severity) / f"{digest.hexdigest()[:32]}.pt"
        if path.is_file():
            try:
                cached = torch.load(path, map_location="cpu", weights_only=True)
            except (RuntimeError, OSError, EOFError):  # truncated or corrupted: recompute
                cached = None
            if isinstance(cached, Tensor) and cached.shape == clean.shape:
                return cached
        images = self._compute(k, clean)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            torch.save(images, tmp)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return images


def corrupted_splits(
    base: Dataset,
    corruptions: Sequence[str],
    severities: Sequence[int],
    *,
    seed: int = 0,
    chunk_size: int = 256,
    cache_dir: str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, CorruptedDataset]:
    """``{"<corruption>/<severity>": CorruptedDataset}`` for every cell, corruption-major."""
    return {
        f"{c}/{s}": CorruptedDataset(
            base, c, int(s), seed=seed, chunk_size=chunk_size, cache_dir=cache_dir, device=device
        )
        for c in corruptions
        for s in severities
    }


def split_names(corruptions: Sequence[str], severities: Sequence[int]) -> list[str]:
    """``"<corruption>/<severity>"`` for every cell, corruption-major."""
    return [f"{c}/{s}" for c in corruptions for s in severities]


def check_cells(corruptions: Sequence[str], severities: Sequence[int]) -> None:
    """Raise ``DataError`` naming the fix unless every ``<corruption>/<severity>`` cell can run.

    Each corruption is tried once on a tiny grey image, so unknown names, severities outside
    1..5 and corruptions that cannot run here (e.g. frost without its photographs) fail before
    any training starts.
    """
    from introspect.corruptions.transforms import ALL_NAMES, corrupt

    for field, values in (("eval.corruptions", corruptions), ("eval.severities", severities)):
        duplicates = sorted({str(v) for v in values if list(values).count(v) > 1})
        if duplicates:
            raise DataError(f"{field} lists {duplicates} more than once; list each only once")
    unknown = [c for c in corruptions if c not in ALL_NAMES]
    if unknown:
        raise DataError(
            f"unknown corruption(s) {unknown} in eval.corruptions; valid: {', '.join(ALL_NAMES)}"
        )
    bad = [s for s in severities if isinstance(s, bool) or not 1 <= int(s) <= 5]
    if bad:
        raise DataError(f"eval.severities must lie in 1..5, got {bad}")
    probe = torch.full((1, 3, 8, 8), 0.5)
    for name in corruptions:
        try:
            corrupt(probe, name, int(severities[0]) if severities else 1)
        except (NotImplementedError, FileNotFoundError, OSError, RuntimeError) as err:
            raise DataError(
                f"corruption {name!r} cannot run here: {err}; remove it from eval.corruptions"
            ) from None


class OfficialCorruption(Dataset[tuple[Tensor, Tensor]]):
    """One ``<corruption>/<severity>`` cell of the released CIFAR-10-C / CIFAR-100-C arrays.

    ``images`` is the memory-mapped ``<corruption>.npy`` (5·n, H, W, 3) uint8 whose rows
    ``(severity - 1)·n … severity·n - 1`` hold the severity; items are float (3, H, W) in [0, 1].
    """

    def __init__(self, images: np.ndarray, labels: Tensor, severity: int) -> None:
        self.images = images
        self.labels = labels
        self.offset = (severity - 1) * len(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        array = np.asarray(self.images[self.offset + index])
        image = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
        return image, self.labels[index]


def load_official(
    directory: str | os.PathLike[str],
    corruptions: Sequence[str],
    severities: Sequence[int],
    *,
    num_classes: int | None = None,
) -> dict[str, OfficialCorruption]:
    """Cells of a released CIFAR-10-C / CIFAR-100-C directory (``<corruption>.npy`` files of
    (5·n, H, W, 3) uint8, severities 1..5 stacked, and ``labels.npy`` of 5·n labels).

    Files are memory-mapped, never read whole. Raises ``DataError`` naming the fix for a missing
    directory or file, inconsistent shapes, labels that differ between severities or labels
    outside ``0..num_classes-1``.
    """
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise DataError(
            f"eval.official_dir={str(root)!r} is not a directory; point it at the extracted "
            "CIFAR-10-C (or CIFAR-100-C) folder holding <corruption>.npy and labels.npy"
        )
    wanted = [root / f"{c}.npy" for c in corruptions] + [root / "labels.npy"]
    missing = [p.name for p in wanted if not p.is_file()]
    if missing:
        raise DataError(
            f"{root} lacks {missing}; download the official arrays or remove those corruptions "
            "from eval.corruptions"
        )
    raw = np.load(root / "labels.npy", mmap_mode="r")
    if raw.ndim != 1 or len(raw) % 5 or not np.issubdtype(raw.dtype, np.integer):
        raise DataError(
            f"{root / 'labels.npy'} must hold 5·n integer labels (five severities of n test "
            f"images), got {raw.dtype} {raw.shape}"
        )
    n = len(raw) // 5
    per_severity = np.asarray(raw).reshape(5, n)
    if not (per_severity == per_severity[0]).all():
        raise DataError(f"{root / 'labels.npy'}: the five severity blocks hold different labels")
    labels = torch.from_numpy(per_severity[0].astype(np.int64))
    if num_classes is not None and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{root / 'labels.npy'} has labels in {int(labels.min())}..{int(labels.max())} but "
            f"the data has {num_classes} classes; use the arrays of the matching dataset"
        )
    out: dict[str, OfficialCorruption] = {}
    for c in corruptions:
        images = np.load(root / f"{c}.npy", mmap_mode="r")
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[::3] != (5 * n, 3):
            raise DataError(
                f"{root / (c + '.npy')} must be uint8 (5·{n}, H, W, 3) to match labels.npy, "
                f"got {images.dtype} {images.shape}"
            )
        for s in severities:
            out[f"{c}/{int(s)}"] = OfficialCorruption(images, labels, int(s))
    return out
