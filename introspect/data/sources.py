"""Loaders of every data source into labelled image pools (before train/val/test splitting)."""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from introspect.data.errors import DataError
from introspect.data.imagefolder import resolve_tree, scan_classes, subfolders, verify_images
from introspect.data.images import ArrayImages, FileImages, decode_files

SOURCES = ("digits", "cifar10", "cifar100", "imagefolder", "npz", "synthetic")

Images = ArrayImages | FileImages


@dataclass
class Pools:
    """A source's images: ``train`` (train and val are drawn from it, and test too when
    ``test`` is None), its own ``test`` split if it has one, and the class names (label order)."""

    train: Images
    test: Images | None
    class_names: list[str]
    # Unreadable image files left out (``data.skip_bad_files``).
    bad_files: list[Path] = field(default_factory=list)


def check_labels(labels: Tensor, num_classes: int, what: str) -> None:
    """Raise unless every label of the non-empty ``labels`` lies in 0..num_classes-1."""
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise DataError(
            f"{what} has labels in {low}..{high}, but labels must lie in 0..{num_classes - 1} "
            f"({num_classes} classes); relabel the data as 0..N-1"
        )


def infer_classes(labels: Tensor, class_names: list[str] | None, what: str) -> list[str]:
    """Class names for the non-empty, non-negative ``labels``: ``class_names`` checked against
    max label + 1, or "0".."N-1" when None."""
    num_classes = int(labels.max()) + 1
    if class_names is None:
        class_names = [str(k) for k in range(num_classes)]
    elif len(class_names) != num_classes:
        raise DataError(
            f"{what} has {len(class_names)} class names but its labels go up to "
            f"{num_classes - 1} ({num_classes} classes); give one name per label 0..N-1"
        )
    if len(class_names) < 2:
        raise DataError(f"{what} has a single class; classification needs at least 2")
    if len(set(class_names)) != len(class_names):
        raise DataError(f"{what} has duplicate class names: {class_names}")
    return class_names


def load_digits(image_size: int | None) -> Pools:
    """scikit-learn's 8x8 handwritten digits (values 0..16 scaled to [0, 1], gray to RGB)."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    names = [str(int(k)) for k in bunch.target_names]
    return Pools(ArrayImages(images, labels, image_size), None, names)


def _cifar(name: str, root: Path, *, train: bool, download: bool) -> Any:
    """One torchvision CIFAR split under ``root``; missing or undownloadable -> DataError."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    try:
        return cls(str(root), train=train, download=download)
    except (RuntimeError, OSError) as err:
        folder = root / cls.base_folder
        if download:
            fix = (
                f"downloading it failed (offline?): {err}. Run once with network access, or copy "
                f"the extracted {cls.base_folder} folder to {folder} (data.root={root}); offline, "
                "an ImageFolder copy works too (data=imagefolder data.path=...)"
            )
        else:
            fix = (
                f"data.download is false. Set data.root to the folder holding {cls.base_folder}, "
                "or data.download=true with network access"
            )
        raise DataError(f"{name} not found at {folder}: {fix}") from err


def fetch_cifar(name: str, root: Path) -> None:
    """Download CIFAR-10/100 into ``root`` unless it is already there."""
    _cifar(name, root, train=True, download=True)


def load_cifar(name: str, root: Path, download: bool, image_size: int | None) -> Pools:
    """CIFAR-10/100 from torchvision under ``root`` (downloaded there when ``download``)."""
    train = _cifar(name, root, train=True, download=download)
    test = _cifar(name, root, train=False, download=False)
    pools = []
    for split in (train, test):
        images = torch.from_numpy(np.ascontiguousarray(split.data)).permute(0, 3, 1, 2)
        labels = torch.as_tensor(split.targets, dtype=torch.int64)
        check_labels(labels, len(split.classes), f"{name} under {root}")
        pools.append(ArrayImages(images, labels, image_size))
    return Pools(pools[0], pools[1], list(train.classes))


def _read_npz(path: Path, what: str) -> tuple[Tensor, Tensor, list[str] | None]:
    """Images (N, C, H, W) uint8, labels (N,) int64 and optional class names of one NPZ file."""
    if not path.is_file():
        raise DataError(f"{what}={str(path)!r} does not exist; give an .npz file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            files = sorted(npz.files)
            arrays = {key: npz[key] for key in ("x", "y", "class_names") if key in files}
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise DataError(
            f"{path} is not a readable .npz of plain arrays ({err}); save it with np.savez"
        ) from err
    missing = [key for key in ("x", "y") if key not in arrays]
    if missing:
        raise DataError(
            f"{path} lacks array(s) {missing} (has {files}); it needs 'x' (uint8 images) and "
            "'y' (integer labels)"
        )
    x, y = arrays["x"], arrays["y"]
    if x.dtype != np.uint8:
        raise DataError(
            f"{path}: x must be uint8 (0..255) but is {x.dtype}; for floats in [0, 1] store "
            "(x * 255).round().astype(np.uint8)"
        )
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(
            f"{path}: x has shape {arrays['x'].shape}; expected (N, H, W, 3) RGB or (N, H, W) "
            "grayscale"
        )
    if min(x.shape[:3]) == 0:
        raise DataError(f"{path}: x has shape {x.shape}; it holds no pixels")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: y must hold integer labels but is {y.dtype}")
    if y.shape != (x.shape[0],):
        raise DataError(
            f"{path}: y has shape {y.shape} but x holds {x.shape[0]} images; give one label each"
        )
    if int(y.min()) < 0:
        raise DataError(f"{path}: y has negative labels ({int(y.min())}); labels must be 0..N-1")
    names = None
    if "class_names" in arrays:
        raw = arrays["class_names"]
        if raw.ndim != 1 or raw.dtype.kind not in "US":
            raise DataError(
                f"{path}: class_names must be a 1-D string array, got {raw.dtype} {raw.shape}"
            )
        names = [str(n) for n in raw.astype(str)]
    images = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    return images, torch.from_numpy(y.astype(np.int64)), names


def check_same_size(
    test: ArrayImages | FileImages,
    train: ArrayImages | FileImages,
    test_what: str,
    train_what: str,
) -> None:
    """``DataError`` naming ``data.image_size`` when test and training images differ in size."""
    if test.image_shape != train.image_shape:
        raise DataError(
            f"{test_what} are {test.image_shape[1:]} but {train_what} are "
            f"{train.image_shape[1:]}; set data.image_size to resize both to one size"
        )


def check_classes_occur(labels: Tensor, num_classes: int, what: str) -> None:
    """``DataError`` when the labels' range implies classes that never occur (e.g. one stray
    label 1000 among 0..9), unless ``num_classes`` (``data.num_classes``) says that many."""
    implied = int(labels.max()) + 1
    present = int(torch.unique(labels).numel())
    if present < implied and num_classes != implied:
        raise DataError(
            f"{what}: labels run to {implied - 1} but only {present} of the {implied} classes "
            f"occur; fix the labels or set data.num_classes={implied}"
        )


def load_npz(path: Path, test_path: Path | None, image_size: int | None) -> Pools:
    """Images ``x`` and labels ``y`` (and optional ``class_names``) from NPZ files."""
    images, labels, names = _read_npz(path, "data.path")
    class_names = infer_classes(labels, names, str(path))
    train = ArrayImages(images, labels, image_size)
    if test_path is None:
        return Pools(train, None, class_names)
    t_images, t_labels, t_names = _read_npz(test_path, "data.test_path")
    if t_names is not None and t_names != class_names:
        raise DataError(
            f"{test_path} has class_names {t_names} but {path} has {class_names}; "
            "both files must use the same classes in the same order"
        )
    check_labels(t_labels, len(class_names), str(test_path))
    test = ArrayImages(t_images, t_labels, image_size)
    check_same_size(test, train, f"{test_path} images", f"{path} images")
    return Pools(train, test, class_names)


def _tree_images(
    classes: dict[str, list[Path]],
    class_names: list[str],
    image_size: int | None,
    decode_dir: Path | None,
) -> Images:
    index = {name: k for k, name in enumerate(class_names)}
    paths = [p for name in classes for p in classes[name]]
    labels = torch.tensor(
        [index[name] for name in classes for _ in classes[name]], dtype=torch.int64
    )
    files = FileImages(paths, labels, image_size)
    return files if decode_dir is None else decode_files(files, decode_dir)


def load_imagefolder(
    path: str,
    test_path: str | None,
    cache_root: Path,
    image_size: int | None,
    *,
    decode: bool = False,
    skip_bad_files: bool = False,
) -> Pools:
    """An ImageFolder tree (directory, archive or folder inside an archive), with ``train/`` and
    ``test/`` if present; ``test_path`` is another tree or an ``.npz`` file (as for
    :func:`load_npz`). ``decode``: decode every image once and serve it from memory (the decoded
    arrays are cached under ``cache_root/decoded``). Every image file is verified first
    (:func:`verify_images`): an unreadable one is a ``DataError``, or left out and listed in
    ``Pools.bad_files`` with ``skip_bad_files``."""
    decode_dir = cache_root / "decoded" if decode else None
    tree = resolve_tree(path, cache_root, "data.path")
    folders = subfolders(tree)
    test_root: Path | None = None
    if "train" in folders:
        extra = sorted(set(folders) - {"train", "test"})
        if extra:
            raise DataError(
                f"{tree} has train/ next to other folders {extra}; a split tree holds only "
                "train/ and test/ (each with class folders), an unsplit one only class folders"
            )
        train_root = tree / "train"
        test_root = tree / "test" if "test" in folders else None
    else:
        train_root = tree
    npz_test = test_path is not None and Path(test_path).suffix.lower() == ".npz"
    if test_path is not None:
        if test_root is not None:
            raise DataError(
                f"{tree} already has a test/ folder and data.test_path={test_path!r} names "
                "another test tree; set only one of them"
            )
        if not npz_test:
            test_root = resolve_tree(test_path, cache_root, "data.test_path")
    train_classes, bad = verify_images(scan_classes(train_root), skip=skip_bad_files)
    class_names = list(train_classes)
    if len(class_names) < 2:
        raise DataError(f"{train_root} has a single class folder; classification needs >= 2")
    train = _tree_images(train_classes, class_names, image_size, decode_dir)
    if npz_test:
        assert test_path is not None
        t_images, t_labels, t_names = _read_npz(Path(test_path).expanduser(), "data.test_path")
        if t_names is not None and t_names != class_names:
            raise DataError(
                f"{test_path} has class_names {t_names} but the tree {train_root} has "
                f"{class_names}; both must use the same classes in the same order"
            )
        check_labels(t_labels, len(class_names), str(test_path))
        npz_images = ArrayImages(t_images, t_labels, image_size)
        check_same_size(npz_images, train, f"{test_path} images", "training images")
        return Pools(train, npz_images, class_names, bad)
    if test_root is None:
        return Pools(train, None, class_names, bad)
    test_classes, test_bad = verify_images(scan_classes(test_root), skip=skip_bad_files)
    unknown = sorted(set(test_classes) - set(class_names))
    if unknown:
        raise DataError(
            f"test tree {test_root} has class folders {unknown} that the training tree "
            f"{train_root} lacks; both must use the same class folder names"
        )
    test = _tree_images(test_classes, class_names, image_size, decode_dir)
    check_same_size(test, train, "test images", "training images")
    return Pools(train, test, class_names, bad + test_bad)


def make_synthetic(num_samples: int, num_classes: int, image_size: int, seed: int) -> Pools:
    """Learnable random images: per class a mean colour and an oriented grating, plus noise.

    Labels are balanced (sample k has class k mod num_classes before shuffling); everything is
    determined by ``seed``.
    """
    if num_classes < 2:
        raise DataError(f"data.num_classes={num_classes}; synthetic data needs at least 2 classes")
    if num_samples < num_classes:
        raise DataError(
            f"data.num_samples={num_samples} < data.num_classes={num_classes}; every class "
            "needs samples, raise data.num_samples"
        )
    gen = torch.Generator().manual_seed(seed)
    colours = 0.25 + 0.5 * torch.rand(num_classes, 3, 1, 1, generator=gen)
    angles = math.pi * torch.rand(num_classes, generator=gen)
    cycles = 1.0 + 2.0 * torch.rand(num_classes, generator=gen)
    coords = torch.linspace(0.0, 1.0, image_size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    phase = xx * angles.cos()[:, None, None] + yy * angles.sin()[:, None, None]
    gratings = 0.15 * torch.sin(2 * math.pi * cycles[:, None, None] * phase)[:, None]
    labels = (torch.arange(num_samples) % num_classes)[torch.randperm(num_samples, generator=gen)]
    noise = 0.1 * torch.randn(num_samples, 3, image_size, image_size, generator=gen)
    images = (colours[labels] + gratings[labels] + noise).clamp_(0.0, 1.0)
    names = [f"class{k}" for k in range(num_classes)]
    return Pools(ArrayImages(images, labels), None, names)
