"""Map-style image datasets: RGB float images in [0, 1] of shape (3, H, W) with int64 labels."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from introspect.data.errors import DataError
from introspect.data.seeding import derive_seed

Sample = tuple[Tensor, Tensor]


def resize(image: Tensor, size: int) -> Tensor:
    """``image`` (C, H, W) float resized to (C, size, size), bilinear with antialiasing."""
    if image.shape[-2:] == (size, size):
        return image
    out = F.interpolate(
        image[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return out[0].clamp_(0.0, 1.0)


class ArrayImages(Dataset[Sample]):
    """Images held in memory, (N, C, H, W) with C in {1, 3}, converted to float RGB per item.

    ``uint8`` images are scaled by 1/255; floating images must already lie in [0, 1]. One-channel
    images are repeated to three channels. ``image_size`` resizes every item to a square.
    """

    def __init__(self, images: Tensor, labels: Tensor, image_size: int | None = None) -> None:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise DataError(f"images must be (N, 1|3, H, W), got shape {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise DataError(
                f"{images.shape[0]} images but labels of shape {tuple(labels.shape)}; "
                "give one label per image"
            )
        self.images = images
        self.labels = labels.to(torch.int64)
        self.image_size = image_size

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(3, H, W) of every item."""
        if self.image_size is not None:
            return (3, self.image_size, self.image_size)
        return (3, int(self.images.shape[2]), int(self.images.shape[3]))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> Sample:
        image = self.images[index]
        image = image.float().div_(255.0) if image.dtype == torch.uint8 else image.float()
        image = image.expand(3, -1, -1).contiguous()
        if self.image_size is not None:
            image = resize(image, self.image_size)
        return image, self.labels[index]


class FileImages(Dataset[Sample]):
    """Image files decoded lazily with PIL (converted to RGB) per item.

    Without ``image_size`` every file must have the size of ``paths[0]``; an item of another size
    raises a :class:`DataError` asking for ``data.image_size``.
    """

    def __init__(
        self, paths: Sequence[Path], labels: Tensor, image_size: int | None = None
    ) -> None:
        if len(paths) == 0:
            raise DataError("no image files to read")
        if labels.shape != (len(paths),):
            raise DataError(f"{len(paths)} files but labels of shape {tuple(labels.shape)}")
        self.paths = list(paths)
        self.labels = labels.to(torch.int64)
        self.image_size = image_size
        if image_size is None:
            with Image.open(self.paths[0]) as first:
                width, height = first.size
            self.native_size = (height, width)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(3, H, W) of every item."""
        if self.image_size is not None:
            return (3, self.image_size, self.image_size)
        return (3, *self.native_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Sample:
        path = self.paths[index]
        with Image.open(path) as img:
            array = np.array(img.convert("RGB"))
        image = torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)
        if self.image_size is not None:
            image = resize(image, self.image_size)
        elif tuple(image.shape[1:]) != self.native_size:
            raise DataError(
                f"{path} is {image.shape[2]}x{image.shape[1]} pixels but {self.paths[0]} is "
                f"{self.native_size[1]}x{self.native_size[0]}; images differ in size, so set "
                "data.image_size to resize them all to one size"
            )
        return image, self.labels[index]


def decode_files(files: FileImages, cache_dir: Path) -> ArrayImages:
    """The images of ``files`` decoded once into memory (uint8), as :class:`ArrayImages`.

    The decoded array is cached under ``cache_dir`` as a ``.npy`` keyed by every file's path,
    size and modification time, written atomically, and read back (``allow_pickle=False``) by
    later calls. Every file must have the size of the first.
    """
    ident = hashlib.sha256()
    for path in files.paths:
        stat = path.stat()
        ident.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    target = cache_dir.expanduser() / f"decoded-{len(files)}-{ident.hexdigest()[:20]}.npy"
    array = None
    if target.is_file():
        try:
            array = np.load(target, allow_pickle=False)
        except (ValueError, OSError):
            array = None
        if array is not None and (array.dtype != np.uint8 or array.shape[0] != len(files)):
            array = None
    if array is None:
        first = np.asarray(Image.open(files.paths[0]).convert("RGB"))
        array = np.empty((len(files), *first.shape), dtype=np.uint8)
        for k, path in enumerate(files.paths):
            with Image.open(path) as img:
                decoded = np.asarray(img.convert("RGB"))
            if decoded.shape != first.shape:
                raise DataError(
                    f"{path} is {decoded.shape[1]}x{decoded.shape[0]} pixels but "
                    f"{files.paths[0]} is {first.shape[1]}x{first.shape[0]}; data.decode needs "
                    "images of one size (set data.decode=false and data.image_size)"
                )
            array[k] = decoded
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, array, allow_pickle=False)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    images = torch.from_numpy(array).permute(0, 3, 1, 2)
    return ArrayImages(images, files.labels, files.image_size)


class TransformDataset(Dataset[Sample]):
    """``base`` with ``transform`` applied to the image of every item (the label is unchanged)."""

    def __init__(self, base: Dataset, transform: Callable[[Tensor], Tensor]) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        image, label = self.base[index]
        return self.transform(image), label


class IndexedDataset(Dataset[tuple[Tensor, Tensor, int]]):
    """``base`` with each item's index appended: ``(image, label, index)``."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        image, label = self.base[index]
        return image, label, index


class SeededTransformDataset(TransformDataset):
    """``TransformDataset`` of a random ``transform`` whose draws for item ``i`` come from the
    CPU random stream seeded with ``seed`` and ``i``: an item is the same whatever the batching,
    the order, the loader workers or the process reading it (the global stream is restored)."""

    def __init__(self, base: Dataset, transform: Callable[[Tensor], Tensor], *, seed: int) -> None:
        super().__init__(base, transform)
        self.seed = seed

    def __getitem__(self, index: int) -> Sample:
        image, label = self.base[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, index))
            return self.transform(image), label
