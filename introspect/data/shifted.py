"""Evaluation splits under distribution shift: a test split corrupted cell by cell."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset, TensorDataset

from introspect.data.errors import DataError


def stack_split(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All images (N, 3, H, W) and labels (N,) of a map-style dataset, in index order."""
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("cannot corrupt an empty split")
    items = [dataset[i] for i in range(n)]
    images = torch.stack([img for img, _ in items])
    labels = torch.as_tensor([int(lbl) for _, lbl in items], dtype=torch.long)
    return images, labels


def cell_seed(name: str, severity: int, seed: int) -> int:
    """The seed of one ``<corruption>/<severity>`` cell: stable across runs and machines."""
    return (zlib.crc32(f"{name}/{severity}".encode()) + 1_000_003 * seed) % (2**31 - 1)


def corrupted_split(
    images: torch.Tensor,
    labels: torch.Tensor,
    name: str,
    severity: int,
    *,
    seed: int = 0,
    chunk_size: int = 512,
    device: torch.device | str = "cpu",
) -> TensorDataset:
    """``images`` (a whole split, see ``stack_split``) corrupted with ``name`` at ``severity``,
    deterministic for ``seed``, paired with ``labels``.

    Images are corrupted in fixed chunks of ``chunk_size`` (chunk ``k`` seeded with the cell seed
    plus ``k``), so the result does not depend on any loader's batch size.
    """
    from introspect.data.corruptions import corrupt

    base = cell_seed(name, severity, seed)
    out = [
        corrupt(images[i : i + chunk_size].to(device), name, severity, seed=base + k).cpu()
        for k, i in enumerate(range(0, len(images), chunk_size))
    ]
    return TensorDataset(torch.cat(out), labels)


def split_names(corruptions: Sequence[str], severities: Sequence[int]) -> list[str]:
    """``"<corruption>/<severity>"`` for every cell, corruption-major."""
    return [f"{c}/{s}" for c in corruptions for s in severities]


def check_cells(corruptions: Sequence[str], severities: Sequence[int]) -> None:
    """Raise ``DataError`` naming the fix unless every ``<corruption>/<severity>`` cell can run.

    Each corruption is tried once on a tiny grey image, so unknown names, severities outside
    1..5 and corruptions that cannot run here (e.g. frost without its photographs) fail before
    any training starts.
    """
    from introspect.data.corruptions import ALL_NAMES, corrupt

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
