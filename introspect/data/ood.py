"""Out-of-distribution sets, which need no labels: unlabeled image arrays, image trees of any
layout (flat folders such as LSUN or iSUN, class folders such as Textures) and SVHN."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from introspect.data.errors import DataError
from introspect.data.imagefolder import IMAGE_EXTENSIONS, resolve_tree, subfolders
from introspect.data.images import ArrayImages, FileImages
from introspect.data.seeding import derive_seed

NO_LABEL = -1
OOD_SOURCES = ("npz", "imagefolder", "svhn")


class UniformNoise(Dataset):
    """``length`` images of i.i.d. uniform ``[0, 1)`` pixels of ``shape`` (C, H, W); image ``i``
    depends only on ``seed`` and ``i``. Labels are -1 (no class)."""

    def __init__(self, length: int, shape: tuple[int, int, int], seed: int) -> None:
        self.length = length
        self.shape = shape
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} images")
        g = torch.Generator().manual_seed(derive_seed(self.seed, index))
        return torch.rand(self.shape, generator=g), torch.tensor(-1)


def unlabeled_npz(path: Path) -> ArrayImages | None:
    """The images of an npz without ``y`` or whose ``y`` holds a single class, labelled
    ``NO_LABEL``; ``None`` for an npz with two or more classes (read it as a labelled source)."""
    if not path.is_file():
        raise DataError(f"{path} does not exist; give an .npz file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz.files:
                raise DataError(f"{path} lacks the array 'x' (uint8 images); has {npz.files}")
            if "y" in npz.files and len(np.unique(npz["y"])) > 1:
                return None
            x = npz["x"]
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise DataError(f"{path} is not a readable .npz of plain arrays ({err})") from err
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)):
        raise DataError(
            f"{path}: x must be uint8 (N, H, W, 3) or (N, H, W), got {x.dtype} {x.shape}"
        )
    if x.ndim == 3:
        x = x[..., None]
    images = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    return ArrayImages(images, torch.full((len(images),), NO_LABEL), None)


def tree_images(path: str, split: str, cache_root: Path, image_size: int) -> FileImages:
    """Every image file under the tree at ``path`` (a folder or an archive), recursively, in
    sorted order and labelled ``NO_LABEL``; with ``split`` ``train``/``test`` and such a
    subfolder, only that subfolder's."""
    tree = resolve_tree(path, cache_root, "path")
    if split in ("train", "test") and split in subfolders(tree):
        tree = tree / split
    files = sorted(
        p
        for p in tree.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(tree).parts)
    )
    if not files:
        raise DataError(f"{tree} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return FileImages(files, torch.full((len(files),), NO_LABEL), image_size)


def svhn(root: str, split: str, image_size: int) -> ArrayImages:
    """SVHN's ``split`` (``test``, ``train``; ``all`` = both) through torchvision, from the
    ``<split>_32x32.mat`` files under ``root`` (not downloaded here)."""
    from torchvision.datasets import SVHN

    parts = ("train", "test") if split == "all" else (split,)
    if any(p not in ("train", "test") for p in parts):
        raise DataError(f"SVHN has the splits train and test (or all), not {split!r}")
    arrays = []
    for part in parts:
        try:
            arrays.append(SVHN(str(Path(root).expanduser()), split=part, download=False).data)
        except RuntimeError as err:
            raise DataError(
                f"SVHN {part} not found under {root} ({err}); fetch it once with "
                f"torchvision.datasets.SVHN({root!r}, split={part!r}, download=True)"
            ) from None
    images = torch.from_numpy(np.concatenate(arrays))
    return ArrayImages(images, torch.full((len(images),), NO_LABEL), image_size)


def ood_source(
    source: str,
    path: str | None,
    test_path: str | None,
    split: str,
    image_size: int,
    cache_root: Path,
) -> Dataset | None:
    """The OOD set of an unlabeled source: an npz without ``y`` or with a single class
    (``path``, plus ``test_path`` for ``split=all``), any image tree, or SVHN; resized to
    ``image_size``. ``None`` for a labelled npz or another source (read as a labelled source)."""
    if source not in OOD_SOURCES:
        return None
    if path is None:
        raise DataError(f"source={source} needs a path")
    if source == "svhn":
        return svhn(path, split, image_size)
    if source == "imagefolder":
        return tree_images(path, split, cache_root, image_size)
    files = [Path(path).expanduser()]
    if test_path is not None and split == "all":
        files.append(Path(test_path).expanduser())
    parts = [unlabeled_npz(f) for f in files]
    if any(p is None for p in parts):
        return None
    resized = []
    for part in parts:
        assert part is not None
        resized.append(ArrayImages(part.images, part.labels, image_size))
    return resized[0] if len(resized) == 1 else ConcatDataset(resized)
