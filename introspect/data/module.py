"""The Lightning datamodule of every source: deterministic train/val/test splits and loaders."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf.errors import MissingMandatoryValue
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from introspect.data.errors import DataError
from introspect.data.images import TransformDataset
from introspect.data.sources import (
    SOURCES,
    Pools,
    fetch_cifar,
    load_cifar,
    load_digits,
    load_imagefolder,
    load_npz,
    make_synthetic,
)

SPLITS = ("train", "val", "test")
_PATH_SOURCES = ("imagefolder", "npz")


def _field(section: Any, name: str) -> Any:
    try:
        return getattr(section, name)
    except MissingMandatoryValue as err:
        raise DataError(f"data.{name} is required here; set data.{name}=...") from err


@dataclass(frozen=True)
class DataSettings:
    """The validated data configuration (see ``DataConfig`` for the meaning of each field)."""

    source: str
    root: Path
    path: str | None
    test_path: str | None
    download: bool
    val_fraction: float
    val_from: str
    test_fraction: float
    split_seed: int
    batch_size: int
    eval_batch_size: int | None
    num_workers: int
    pin_memory: bool
    image_size: int | None
    num_classes: int
    num_samples: int
    decode: bool = False
    train_limit: int | None = None
    skip_bad_files: bool = False

    @classmethod
    def from_config(cls, data: Any) -> DataSettings:
        """Read and check every field of the data section ``data`` (a ``DataConfig`` or any
        object with its attributes); raise DataError if bad."""
        optional = ("decode", "train_limit", "skip_bad_files")
        values = {
            name: _field(data, name) for name in cls.__dataclass_fields__ if name not in optional
        }
        values["decode"] = bool(getattr(data, "decode", False))
        values["train_limit"] = getattr(data, "train_limit", None)
        values["skip_bad_files"] = bool(getattr(data, "skip_bad_files", False))
        source = values["source"]
        if source not in SOURCES:
            raise DataError(f"unknown data.source {source!r}; valid sources: {', '.join(SOURCES)}")
        for key in ("path", "test_path"):
            if values[key] is not None:
                values[key] = str(values[key])
                if source not in _PATH_SOURCES:
                    raise DataError(
                        f"data.{key}={values[key]!r} is not used by data.source={source!r} "
                        f"(only by {' and '.join(_PATH_SOURCES)}); remove it"
                    )
        if source in _PATH_SOURCES and values["path"] is None:
            raise DataError(f"data.source={source!r} needs data.path (the training data)")
        values["root"] = Path(str(values["root"])).expanduser()
        if not 0.0 <= values["val_fraction"] < 1.0:
            raise DataError(f"data.val_fraction={values['val_fraction']} must be in [0, 1)")
        if values["val_from"] not in ("train", "test"):
            raise DataError(f"data.val_from={values['val_from']!r} must be 'train' or 'test'")
        if not 0.0 < values["test_fraction"] < 1.0:
            raise DataError(f"data.test_fraction={values['test_fraction']} must be in (0, 1)")
        positive = ["batch_size", "eval_batch_size", "image_size", "num_samples", "train_limit"]
        for key in positive:
            if values[key] is not None and int(values[key]) < 1:
                raise DataError(f"data.{key}={values[key]} must be a positive integer")
        for key in ("split_seed", "num_workers"):
            if int(values[key]) < 0:
                raise DataError(f"data.{key}={values[key]} must be a non-negative integer")
        return cls(**values)


def split_indices(
    labels: np.ndarray, fraction: float, seed: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted index arrays (kept, held) with ``ceil(fraction * n)`` indices held out.

    The split is stratified by label when every class can appear on both sides (at least two
    samples per class and enough held and kept slots), else a plain random split; it depends
    only on ``labels``, ``fraction`` and ``seed``.
    """
    n = len(labels)
    index = np.arange(n)
    if fraction == 0:
        return index, index[:0]
    n_held = math.ceil(round(fraction * n, 9))
    if n_held >= n:
        raise DataError(
            f"holding out {fraction} of the {n} samples of {what} leaves none; use more data or "
            "a smaller fraction"
        )
    counts = np.bincount(labels)
    present = int((counts > 0).sum())
    can_stratify = counts[counts > 0].min() >= 2 and min(n_held, n - n_held) >= present
    kept, held = train_test_split(
        index, test_size=n_held, random_state=seed, stratify=labels if can_stratify else None
    )
    return np.sort(kept), np.sort(held)


def load_pools(settings: DataSettings) -> Pools:
    """The images of ``settings.source`` before splitting."""
    s = settings
    if s.source == "digits":
        return load_digits(s.image_size)
    if s.source in ("cifar10", "cifar100"):
        return load_cifar(s.source, s.root, s.download, s.image_size)
    if s.source == "imagefolder":
        assert s.path is not None
        return load_imagefolder(
            s.path,
            s.test_path,
            s.root,
            s.image_size,
            decode=s.decode,
            skip_bad_files=s.skip_bad_files,
        )
    if s.source == "npz":
        assert s.path is not None
        test = Path(s.test_path).expanduser() if s.test_path is not None else None
        return load_npz(Path(s.path).expanduser(), test, s.image_size)
    return make_synthetic(s.num_samples, s.num_classes, s.image_size or 32, s.split_seed)


def make_splits(pools: Pools, settings: DataSettings) -> dict[str, Dataset]:
    """Train/val/test subsets: test held out by ``test_fraction`` when the source has no test
    split, then val held out by ``val_fraction`` of the rest of the training pool or, with
    ``val_from="test"``, of the test pool (the test split keeps the remainder); every split is
    seeded by ``split_seed``."""
    labels = pools.train.labels.numpy()
    what = f"data.source={settings.source!r}"
    if pools.test is None:
        rest, test_idx = split_indices(labels, settings.test_fraction, settings.split_seed, what)
        test_pool, test_labels, test_index = pools.train, labels[test_idx], test_idx
    else:
        rest = np.arange(len(labels))
        test_pool = pools.test
        test_labels = pools.test.labels.numpy()
        test_index = np.arange(len(test_labels))
    if settings.val_from == "test":
        kept, held = split_indices(
            test_labels, settings.val_fraction, settings.split_seed, f"the test split of {what}"
        )
        return {
            "train": Subset(pools.train, _limit(rest, settings).tolist()),
            "val": Subset(test_pool, test_index[held].tolist()),
            "test": Subset(test_pool, test_index[kept].tolist()),
        }
    test: Dataset = Subset(pools.train, test_idx.tolist()) if pools.test is None else pools.test
    kept, held = split_indices(labels[rest], settings.val_fraction, settings.split_seed, what)
    return {
        "train": Subset(pools.train, _limit(rest[kept], settings).tolist()),
        "val": Subset(pools.train, rest[held].tolist()),
        "test": test,
    }


def _limit(train: np.ndarray, settings: DataSettings) -> np.ndarray:
    """The training indices ``train``, or a sorted subset of ``settings.train_limit`` of them
    drawn with ``split_seed``."""
    limit = settings.train_limit
    if limit is None or limit >= len(train):
        return train
    rng = np.random.default_rng(settings.split_seed)
    return np.sort(rng.choice(train, size=int(limit), replace=False))


class ImageDataModule(L.LightningDataModule):
    """Images of one configured source split into train/val/test, with their loaders.

    Every split yields ``(image, label)``: float32 RGB (3, H, W) in [0, 1] and an int64 label,
    never augmented; ``train_transform`` (settable at any time) is applied by
    :meth:`train_dataloader` only. Properties load the data on first use.
    """

    def __init__(
        self, data: Any, *, train_transform: Callable[[Tensor], Tensor] | None = None
    ) -> None:
        super().__init__()
        self.settings = DataSettings.from_config(data)
        self.train_transform = train_transform
        self._pools: Pools | None = None
        self._splits: dict[str, Dataset] = {}

    def prepare_data(self) -> None:
        """Download CIFAR once (Lightning calls this on one process); other sources: nothing."""
        s = self.settings
        if s.source in ("cifar10", "cifar100") and s.download:
            fetch_cifar(s.source, s.root)

    def setup(self, stage: str | None = None) -> None:
        """Load the source and split it (once; later calls do nothing)."""
        if self._pools is not None:
            return
        pools = load_pools(self.settings)
        if pools.bad_files:
            print(
                f"skipping {len(pools.bad_files)} unreadable image file(s) "
                f"(data.skip_bad_files=true), e.g. {pools.bad_files[0]}",
                file=sys.stderr,
            )
        self._splits = make_splits(pools, self.settings)
        self._pools = pools

    def _loaded(self) -> Pools:
        self.setup()
        assert self._pools is not None
        return self._pools

    def source_labels(self) -> Tensor:
        """Every label of the source before splitting (its own test images included)."""
        pools = self._loaded()
        if pools.test is None:
            return pools.train.labels
        return torch.cat([pools.train.labels, pools.test.labels])

    @property
    def bad_files(self) -> list[Path]:
        """Unreadable image files left out of the source (``data.skip_bad_files``)."""
        return list(self._loaded().bad_files)

    @property
    def class_names(self) -> list[str]:
        """Class names in label order."""
        return list(self._loaded().class_names)

    @property
    def num_classes(self) -> int:
        """Number of classes (labels are 0..num_classes-1)."""
        return len(self._loaded().class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image; C is always 3."""
        return self._loaded().train.image_shape

    def split(self, name: str) -> Dataset:
        """The un-augmented ``"train"``, ``"val"`` or ``"test"`` split."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
        self.setup()
        return self._splits[name]

    def loader(
        self,
        dataset: Dataset,
        *,
        shuffle: bool = False,
        batch_size: int | None = None,
        sampler: Sampler[int] | None = None,
    ) -> DataLoader:
        """A loader of any ``dataset`` with the configured workers and memory pinning;
        ``batch_size`` defaults to ``eval_batch_size`` (or ``batch_size`` when that is unset);
        ``sampler`` picks which items, in which order (e.g. one process's share)."""
        s = self.settings
        if batch_size is not None and batch_size < 1:
            raise DataError(f"batch_size={batch_size} must be a positive integer")
        size = batch_size or s.eval_batch_size or s.batch_size
        return DataLoader(
            dataset,
            batch_size=size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=s.num_workers,
            pin_memory=s.pin_memory,
            persistent_workers=s.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of the train split, with ``train_transform`` applied if set."""
        dataset = self.split("train")
        if self.train_transform is not None:
            dataset = TransformDataset(dataset, self.train_transform)
        return self.loader(dataset, shuffle=True, batch_size=self.settings.batch_size)

    def val_dataloader(self) -> DataLoader:
        """Batches of the val split in order."""
        return self.loader(self.split("val"))

    def test_dataloader(self) -> DataLoader:
        """Batches of the test split in order."""
        return self.loader(self.split("test"))


def build_datamodule(
    data: Any, *, train_transform: Callable[[Tensor], Tensor] | None = None
) -> ImageDataModule:
    """The datamodule of the data section ``data`` (``DataConfig``, ``DataSettings`` or the
    like; loaded lazily on ``setup`` or first use)."""
    return ImageDataModule(data, train_transform=train_transform)
