"""``QualitySet``: distorted images with their quality scores, references and content groups."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


class QualityDataError(ValueError):
    """A quality database that cannot be read as asked; the message names the fix."""


def read_image(path: Path) -> torch.Tensor:
    """An image file as a ``(3, H, W)`` float tensor in ``[0, 1]`` (grey expanded to RGB)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except OSError as err:
        raise QualityDataError(f"cannot read image {path}: {err}") from err
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


@dataclass
class QualitySet:
    """``N`` distorted images, each with a score, its reference image and content group.

    Images are held in memory (``pixels``, uint8 ``(N, 3, H, W)``, with ``reference_pixels``
    ``(R, 3, H, W)``) or read from files (``paths`` and ``reference_paths``).
    ``reference_index[i]`` is the reference of image ``i`` (its content group).
    ``stds`` are the standard deviations of the opinion scores, when the database has them.
    ``higher_is_better`` is False for DMOS-like scores. ``proxy`` marks scores that are not
    human opinions.
    """

    name: str
    scores: np.ndarray
    reference_index: np.ndarray
    distortions: list[str]
    levels: np.ndarray
    score_name: str
    higher_is_better: bool = True
    stds: np.ndarray | None = None
    proxy: bool = False
    pixels: torch.Tensor | None = None
    reference_pixels: torch.Tensor | None = None
    paths: list[Path] = field(default_factory=list)
    reference_paths: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.scores)
        if self.pixels is None and len(self.paths) != n:
            raise QualityDataError(f"{self.name}: {n} scores but {len(self.paths)} image paths")
        if self.pixels is not None and self.pixels.shape[0] != n:
            raise QualityDataError(f"{self.name}: {n} scores but {self.pixels.shape[0]} images")
        if len(self.reference_index) != n or len(self.distortions) != n or len(self.levels) != n:
            raise QualityDataError(f"{self.name}: per-image fields of different lengths")
        if self.stds is not None and len(self.stds) != n:
            raise QualityDataError(f"{self.name}: {n} scores but {len(self.stds)} stds")

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def num_references(self) -> int:
        """Number of reference images (content groups)."""
        return int(self.reference_index.max()) + 1 if len(self) else 0

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        """The distorted images ``indices`` as a float ``(B, 3, H, W)`` batch in ``[0, 1]``."""
        if self.pixels is not None:
            return self.pixels[list(indices)].float() / 255.0
        return _stack([read_image(self.paths[i]) for i in indices], self.name)

    def references(self, indices: Sequence[int]) -> torch.Tensor:
        """The reference images of the distorted images ``indices``, as ``images`` does."""
        refs = [int(self.reference_index[i]) for i in indices]
        if self.reference_pixels is not None:
            return self.reference_pixels[refs].float() / 255.0
        return _stack([read_image(self.reference_paths[r]) for r in refs], self.name)


def _stack(images: list[torch.Tensor], name: str) -> torch.Tensor:
    shapes = {tuple(img.shape) for img in images}
    if len(shapes) > 1:
        raise QualityDataError(
            f"{name}: images of different sizes {sorted(shapes)} in one batch; every image of "
            "a quality database must have one size"
        )
    return torch.stack(images)


def split_by_reference(
    reference_index: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Image indices of ``train``/``val``/``test`` splits with disjoint reference contents.

    References are shuffled with ``seed`` and the first ``round(test_fraction * R)`` (at least
    one) go to test, the next ``round(val_fraction * R)`` (at least one if the fraction is
    positive) to val, the rest to train.
    """
    refs = np.unique(reference_index)
    rng = np.random.default_rng(seed)
    order = rng.permutation(refs)
    n_test = max(1, round(test_fraction * len(refs)))
    n_val = max(1, round(val_fraction * len(refs))) if val_fraction > 0 else 0
    if n_test + n_val >= len(refs):
        raise QualityDataError(
            f"{len(refs)} reference images cannot be split into test ({n_test}), val ({n_val}) "
            "and a non-empty train part; lower quality.val_fraction/quality.test_fraction"
        )
    parts = {
        "test": order[:n_test],
        "val": order[n_test : n_test + n_val],
        "train": order[n_test + n_val :],
    }
    return {k: np.flatnonzero(np.isin(reference_index, v)) for k, v in parts.items()}
