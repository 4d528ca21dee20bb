"""Data sources, splits, the datamodule and augmentations, against independent references."""

from __future__ import annotations

import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from sklearn.datasets import load_digits
from torch.utils.data import Dataset

from introspect.config.schema import DataConfig
from introspect.data import (
    AUGMENTATIONS,
    DataError,
    ImageDataModule,
    TransformDataset,
    build_augmentation,
    build_datamodule,
)

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


def _dm(**fields) -> ImageDataModule:
    dm = build_datamodule(DataConfig(**fields))
    dm.setup()
    return dm


def _indices(dm: ImageDataModule, name: str) -> list[int]:
    return list(dm.split(name).indices)  # type: ignore[attr-defined]


def _stack(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def _check_items(dm: ImageDataModule) -> None:
    """Every item of every split is float32 (3, H, W) in [0, 1] with an int64 label in range."""
    for name in ("train", "val", "test"):
        x, y = _stack(dm.split(name))
        assert x.dtype == torch.float32 and tuple(x.shape[1:]) == dm.image_shape
        assert x.min() >= 0 and x.max() <= 1
        assert y.dtype == torch.int64 and y.ndim == 1
        assert y.min() >= 0 and y.max() < dm.num_classes


# --------------------------------------------------------------------------------- digits


def test_digits_splits_sizes_content_and_stratification() -> None:
    dm = _dm(source="digits", val_fraction=0.1, test_fraction=0.2, split_seed=0)
    ref = load_digits()
    n = len(ref.target)
    train, val, test = (_indices(dm, s) for s in ("train", "val", "test"))
    assert len(test) == 360  # ceil(0.2 * 1797)
    assert len(val) == int(np.ceil(0.1 * (n - 360)))
    assert len(train) + len(val) + len(test) == n
    assert sorted(train + val + test) == list(range(n))  # disjoint and complete
    assert dm.class_names == [str(k) for k in range(10)] and dm.num_classes == 10
    assert dm.image_shape == (3, 8, 8)
    _check_items(dm)
    # items are sklearn's images / 16, gray repeated to RGB, with sklearn's labels
    x, y = _stack(dm.split("test"))
    expect = torch.from_numpy(ref.images[test] / 16.0).float()[:, None].expand(-1, 3, -1, -1)
    torch.testing.assert_close(x, expect)
    assert torch.equal(y, torch.from_numpy(ref.target[test]).long())
    # stratified: each class's test count is within one of 20 % of its size
    counts = np.bincount(ref.target, minlength=10)
    test_counts = np.bincount(ref.target[test], minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * counts) <= 1)


def test_splits_are_deterministic_by_seed() -> None:
    a, b, c = (_dm(source="digits", split_seed=s) for s in (3, 3, 4))
    for name in ("train", "val", "test"):
        assert _indices(a, name) == _indices(b, name)
    assert _indices(a, "test") != _indices(c, "test")
    assert _indices(a, "val") != _indices(c, "val")


def test_digits_resized_matches_pil_bilinear() -> None:
    dm = _dm(source="digits", image_size=12)
    assert dm.image_shape == (3, 12, 12)
    idx = _indices(dm, "train")[0]
    gray = (load_digits().images[idx] / 16.0).astype(np.float32)
    ref = np.asarray(Image.fromarray(gray, mode="F").resize((12, 12), Image.BILINEAR))
    x, _ = dm.split("train")[0]
    for channel in x:
        np.testing.assert_allclose(channel.numpy(), ref, atol=1e-5)


def test_setup_is_idempotent_and_properties_load_lazily() -> None:
    dm = build_datamodule(DataConfig(source="digits"))
    assert dm.num_classes == 10  # loads on first use
    train = dm.split("train")
    dm.setup("fit")
    dm.setup()
    assert dm.split("train") is train
    with pytest.raises(DataError, match="valid splits: train, val, test"):
        dm.split("validation")


# ------------------------------------------------------------------------------ synthetic


def test_synthetic_is_seeded_balanced_and_sized() -> None:
    kw = dict(source="synthetic", num_samples=100, num_classes=5, image_size=8)
    a, b, c = _dm(**kw, split_seed=0), _dm(**kw, split_seed=0), _dm(**kw, split_seed=1)
    assert a.image_shape == (3, 8, 8) and a.num_classes == 5 and len(a.class_names) == 5
    _check_items(a)
    sizes = [len(a.split(s)) for s in ("train", "val", "test")]
    assert sizes == [72, 8, 20]  # test ceil(0.2*100)=20, val ceil(0.1*80)=8
    xa, ya = _stack(a.split("train"))
    xb, yb = _stack(b.split("train"))
    xc, _ = _stack(c.split("train"))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(xa, xc)
    labels = torch.cat([_stack(a.split(s))[1] for s in ("train", "val", "test")])
    assert torch.equal(torch.bincount(labels), torch.full((5,), 20))
    assert _dm(source="synthetic", num_samples=20).image_shape == (3, 32, 32)


def test_synthetic_is_learnable_by_a_linear_model() -> None:
    from sklearn.linear_model import LogisticRegression

    dm = _dm(source="synthetic", num_samples=200, image_size=8)
    x, y = _stack(dm.split("train"))
    xt, yt = _stack(dm.split("test"))
    clf = LogisticRegression(max_iter=500).fit(x.flatten(1).numpy(), y.numpy())
    assert clf.score(xt.flatten(1).numpy(), yt.numpy()) > 0.8  # chance is 0.1


# ------------------------------------------------------------------------------ config


def test_config_errors_are_clear() -> None:
    with pytest.raises(DataError, match="valid sources: digits, cifar10, cifar100"):
        build_datamodule(DataConfig(source="mnist"))
    with pytest.raises(DataError, match="needs data.path"):
        build_datamodule(DataConfig(source="npz"))
    with pytest.raises(DataError, match="not used by"):
        build_datamodule(DataConfig(source="digits", path="x.npz"))
    with pytest.raises(DataError, match="val_fraction"):
        build_datamodule(DataConfig(source="digits", val_fraction=1.0))
    with pytest.raises(DataError, match="test_fraction"):
        build_datamodule(DataConfig(source="digits", test_fraction=0.0))
    missing = OmegaConf.structured(DataConfig(source="imagefolder"))
    missing.path = "???"
    with pytest.raises(DataError, match="data.path is required"):
        build_datamodule(missing)


def test_accepts_an_omegaconf_config() -> None:
    cfg = OmegaConf.structured(DataConfig(source="synthetic", num_samples=40, image_size=4))
    dm = build_datamodule(cfg)
    assert dm.image_shape == (3, 4, 4) and len(dm.split("test")) == 8


# ---------------------------------------------------------------------------------- npz


def _write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_train_and_test_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 6, 5, 3), dtype=np.uint8)
    y = np.arange(40) % 4
    xt = rng.integers(0, 256, (12, 6, 5, 3), dtype=np.uint8)
    yt = np.arange(12) % 4
    names = np.array(["a", "b", "c", "d"])
    train = _write_npz(tmp_path / "train.npz", x=x, y=y, class_names=names)
    test = _write_npz(tmp_path / "test.npz", x=xt, y=yt.astype(np.uint8))
    dm = _dm(source="npz", path=str(train), test_path=str(test), val_fraction=0.25)
    assert dm.class_names == ["a", "b", "c", "d"] and dm.image_shape == (3, 6, 5)
    assert [len(dm.split(s)) for s in ("train", "val", "test")] == [30, 10, 12]
    _check_items(dm)
    xs, ys = _stack(dm.split("test"))
    torch.testing.assert_close(xs, torch.from_numpy(xt).permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(ys, torch.from_numpy(yt).long())
    val = _indices(dm, "val")
    xv, yv = _stack(dm.split("val"))
    torch.testing.assert_close(xv, torch.from_numpy(x[val]).permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(yv, torch.from_numpy(y[val]).long())
    assert sorted(_indices(dm, "train") + val) == list(range(40))


def test_val_from_test_halves_the_test_file_and_keeps_every_training_image(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (40, 6, 5, 3), dtype=np.uint8)
    xt = rng.integers(0, 256, (12, 6, 5, 3), dtype=np.uint8)
    yt = np.arange(12) % 4
    train = _write_npz(tmp_path / "train.npz", x=x, y=np.arange(40) % 4)
    test = _write_npz(tmp_path / "test.npz", x=xt, y=yt)
    dm = _dm(source="npz", path=str(train), test_path=str(test), val_fraction=0.5,
             val_from="test")  # fmt: skip
    assert _indices(dm, "train") == list(range(40))
    val, kept = _indices(dm, "val"), _indices(dm, "test")
    assert len(val) == len(kept) == 6 and sorted(val + kept) == list(range(12))
    # stratified: each of the 4 classes (3 test images each) lands on both sides
    assert set(yt[val]) == set(yt[kept]) == {0, 1, 2, 3}
    xv, _ = _stack(dm.split("val"))
    torch.testing.assert_close(xv, torch.from_numpy(xt[val]).permute(0, 3, 1, 2).float() / 255)
    # Without a test file, val comes out of the held-out test part of the training pool.
    digits = _dm(source="digits", val_fraction=0.5, val_from="test")
    plain = _dm(source="digits", val_fraction=0.5)
    assert sorted(_indices(digits, "val") + _indices(digits, "test")) == _indices(plain, "test")
    assert _indices(digits, "train") == sorted(_indices(plain, "train") + _indices(plain, "val"))
    with pytest.raises(DataError, match="val_from"):
        _dm(source="digits", val_from="train+test")


def test_npz_grayscale_without_test_file_is_split(tmp_path: Path) -> None:
    x = np.random.default_rng(1).integers(0, 256, (50, 7, 7), dtype=np.uint8)
    y = np.arange(50) % 5
    dm = _dm(source="npz", path=str(_write_npz(tmp_path / "g.npz", x=x, y=y)))
    assert dm.class_names == ["0", "1", "2", "3", "4"]
    assert [len(dm.split(s)) for s in ("train", "val", "test")] == [36, 4, 10]
    test = _indices(dm, "test")
    xs, _ = _stack(dm.split("test"))
    gray = torch.from_numpy(x[test]).float()[:, None] / 255
    torch.testing.assert_close(xs, gray.expand(-1, 3, -1, -1))


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (dict(x=np.zeros((4, 5, 5, 3), np.float32), y=np.arange(4)), "must be uint8"),
        (dict(x=np.zeros((4, 5, 5, 4), np.uint8), y=np.arange(4)), r"expected \(N, H, W, 3\)"),
        (dict(x=np.zeros((4, 5), np.uint8), y=np.arange(4)), r"expected \(N, H, W, 3\)"),
        (dict(x=np.zeros((4, 5, 5), np.uint8), y=np.arange(3)), "give one label each"),
        (dict(x=np.zeros((4, 5, 5), np.uint8), y=np.array([0, 1, -1, 1])), "negative labels"),
        (dict(x=np.zeros((4, 5, 5), np.uint8), y=np.array([0.0, 1, 0, 1])), "integer labels"),
        (dict(x=np.zeros((4, 5, 5), np.uint8)), r"lacks array\(s\) \['y'\]"),
        (dict(x=np.zeros((4, 5, 5), np.uint8), y=np.zeros(4, int)), "single class"),
        (
            dict(x=np.zeros((4, 5, 5), np.uint8), y=np.arange(4), class_names=np.array(["a"])),
            "1 class names but its labels go up to 3",
        ),
    ],
)
def test_npz_validation_errors(tmp_path: Path, arrays: dict, message: str) -> None:
    path = _write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        _dm(source="npz", path=str(path))


def test_npz_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"not a zip archive")
    with pytest.raises(DataError, match="not a readable .npz"):
        _dm(source="npz", path=str(tmp_path / "junk.npz"))


def test_npz_test_file_mismatches(tmp_path: Path) -> None:
    x = np.zeros((8, 4, 4, 3), np.uint8)
    train = _write_npz(tmp_path / "a.npz", x=x, y=np.arange(8) % 2)
    big = _write_npz(tmp_path / "b.npz", x=np.zeros((2, 5, 5, 3), np.uint8), y=np.arange(2))
    extra = _write_npz(tmp_path / "c.npz", x=x[:3], y=np.arange(3))
    with pytest.raises(DataError, match="set data.image_size"):
        _dm(source="npz", path=str(train), test_path=str(big))
    assert _dm(source="npz", path=str(train), test_path=str(big), image_size=4).image_shape == (
        3,
        4,
        4,
    )
    with pytest.raises(DataError, match=r"labels in 0\.\.2, but labels must lie in 0\.\.1"):
        _dm(source="npz", path=str(train), test_path=str(extra))
    with pytest.raises(DataError, match="does not exist"):
        _dm(source="npz", path=str(tmp_path / "nope.npz"))


# --------------------------------------------------------------------------- imagefolder


def _write_tree(root: Path, layout: dict[str, dict[str, int]], size=(6, 5), seed=0) -> dict:
    """PNG images (and one JPEG per class) under root/<split>/<class>/; returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays: dict[Path, np.ndarray] = {}
    for split, classes in layout.items():
        for name, count in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(count):
                array = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                suffix = ".jpg" if k == count - 1 else ".png"
                Image.fromarray(array).save(folder / f"{k:03d}{suffix}")
                arrays[folder / f"{k:03d}{suffix}"] = array
    return arrays


def _pil_reference(path: Path) -> torch.Tensor:
    with Image.open(path) as img:
        return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).float() / 255


def test_imagefolder_directory_with_train_and_test(tmp_path: Path) -> None:
    layout = {"train": {"dog": 5, "cat": 4, "emu": 3}, "test": {"cat": 2, "dog": 2, "emu": 1}}
    arrays = _write_tree(tmp_path / "tree", layout)
    dm = _dm(source="imagefolder", path=str(tmp_path / "tree"), val_fraction=0.25)
    assert dm.class_names == ["cat", "dog", "emu"] and dm.image_shape == (3, 6, 5)
    assert [len(dm.split(s)) for s in ("train", "val", "test")] == [9, 3, 5]
    _check_items(dm)
    test = dm.split("test")
    labels = sorted(int(test[i][1]) for i in range(len(test)))
    assert labels == [0, 0, 1, 1, 2]
    for i in range(len(test)):
        path = test.paths[i]  # type: ignore[attr-defined]
        x, y = test[i]
        assert dm.class_names[int(y)] == path.parent.name
        torch.testing.assert_close(x, _pil_reference(path))
        if path.suffix == ".png":  # lossless: exactly the written pixels
            torch.testing.assert_close(x, torch.from_numpy(arrays[path]).permute(2, 0, 1) / 255)


def test_imagefolder_single_tree_is_split_and_test_path_used(tmp_path: Path) -> None:
    _write_tree(tmp_path / "flat", {".": {"a": 6, "b": 4}})
    dm = _dm(source="imagefolder", path=str(tmp_path / "flat"), test_fraction=0.2)
    assert dm.class_names == ["a", "b"]
    sizes = [len(dm.split(s)) for s in ("train", "val", "test")]
    assert sizes == [7, 1, 2] and sum(sizes) == 10
    assert sorted(_indices(dm, "train") + _indices(dm, "val") + _indices(dm, "test")) == list(
        range(10)
    )
    _write_tree(tmp_path / "other", {".": {"b": 3}}, seed=1)
    dm = _dm(source="imagefolder", path=str(tmp_path / "flat"), test_path=str(tmp_path / "other"))
    assert len(dm.split("test")) == 3
    assert [int(dm.split("test")[i][1]) for i in range(3)] == [1, 1, 1]


def test_imagefolder_mixed_sizes_need_image_size(tmp_path: Path) -> None:
    _write_tree(tmp_path / "t", {".": {"a": 2}}, size=(6, 6))
    _write_tree(tmp_path / "t", {".": {"b": 2}}, size=(9, 7), seed=1)
    dm = _dm(source="imagefolder", path=str(tmp_path / "t"), val_fraction=0.0, test_fraction=0.25)
    datasets = [dm.split("train"), dm.split("test")]
    with pytest.raises(DataError, match="set data.image_size"):
        for ds in datasets:
            _stack(ds)
    dm = _dm(source="imagefolder", path=str(tmp_path / "t"), image_size=4, test_fraction=0.25)
    assert dm.image_shape == (3, 4, 4)
    _check_items(dm)


def test_imagefolder_tree_errors(tmp_path: Path) -> None:
    _write_tree(tmp_path / "junk", {".": {"a": 2, "b": 2}})
    (tmp_path / "junk" / "a" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="not images"):
        _dm(source="imagefolder", path=str(tmp_path / "junk"))
    _write_tree(tmp_path / "extra", {"train": {"a": 2, "b": 2}, "val": {"a": 1}})
    with pytest.raises(DataError, match=r"other folders \['val'\]"):
        _dm(source="imagefolder", path=str(tmp_path / "extra"))
    _write_tree(tmp_path / "unk", {"train": {"a": 2, "b": 2}, "test": {"c": 1}})
    with pytest.raises(DataError, match=r"class folders \['c'\]"):
        _dm(source="imagefolder", path=str(tmp_path / "unk"))
    with pytest.raises(DataError, match="does not exist"):
        _dm(source="imagefolder", path=str(tmp_path / "missing"))
    _write_tree(tmp_path / "readme", {".": {"a": 2, "b": 2}})
    (tmp_path / "readme" / "README").write_text("about this tree")
    with pytest.warns(UserWarning, match=r"ignoring 1 file\(s\) at the top .*: README"):
        dm = _dm(source="imagefolder", path=str(tmp_path / "readme"), val_fraction=0.0)
    assert sum(len(dm.split(s)) for s in ("train", "test")) == 4


def test_folder_inside_archive_with_npz_test_set_and_decoded_once(tmp_path: Path) -> None:
    arrays = _write_tree(
        tmp_path / "src", {"train": {"x": 4, "y": 3}, "test": {"x": 1, "y": 1}}, size=(5, 5)
    )
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src", arcname=".")
    gen = np.random.default_rng(3)
    test_x = gen.integers(0, 256, (6, 5, 5, 3), dtype=np.uint8)
    npz = tmp_path / "test.npz"
    np.savez(npz, x=test_x, y=np.array([0, 1, 0, 1, 1, 0]))
    cache = tmp_path / "cache"
    fields = {"source": "imagefolder", "path": f"{archive}/train", "test_path": str(npz)}
    plain = _dm(**fields, root=str(cache), val_fraction=0.0)
    decoded = _dm(**fields, root=str(cache), val_fraction=0.0, decode=True)
    assert decoded.class_names == ["x", "y"] and len(decoded.split("train")) == 7
    (cached,) = (cache / "decoded").glob("*.npy")
    for dm in (plain, decoded):  # the tree's own test/ folder is not used
        test_images, test_labels = _stack(dm.split("test"))
        torch.testing.assert_close(test_images, torch.from_numpy(test_x).permute(0, 3, 1, 2) / 255)
        assert test_labels.tolist() == [0, 1, 0, 1, 1, 0]
    files = plain.split("train")
    x_files, y_files = _stack(files)
    x_decoded, y_decoded = _stack(decoded.split("train"))
    assert torch.equal(x_decoded, x_files) and torch.equal(y_decoded, y_files)
    paths = [files.dataset.paths[i] for i in files.indices]  # type: ignore[attr-defined]
    for i, extracted in enumerate(paths):  # PIL decodes of the original files
        path = tmp_path / "src" / Path(*extracted.parts[-3:])
        torch.testing.assert_close(x_files[i], _pil_reference(path))
        if path.suffix == ".png":
            torch.testing.assert_close(
                x_files[i], torch.from_numpy(arrays[path]).permute(2, 0, 1) / 255
            )
    stamp = cached.stat().st_mtime_ns
    again = _dm(**fields, root=str(cache), val_fraction=0.0, decode=True)
    assert cached.stat().st_mtime_ns == stamp  # read back, not decoded again
    assert torch.equal(_stack(again.split("train"))[0], x_files)
    with pytest.raises(DataError, match=r"has no folder 'val'.*top-level folders: test, train"):
        _dm(source="imagefolder", path=f"{archive}/val", root=str(cache))


def test_imagefolder_archive_extracted_once_and_redone_if_interrupted(tmp_path: Path) -> None:
    _write_tree(tmp_path / "src" / "tree", {"train": {"x": 3, "y": 3}, "test": {"x": 1, "y": 1}})
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "tree", arcname="tree")  # one wrapper folder
    cache = tmp_path / "cache"
    dm = _dm(source="imagefolder", path=str(archive), root=str(cache), val_fraction=0.0)
    assert dm.class_names == ["x", "y"] and len(dm.split("test")) == 2
    (extracted,) = (cache / "extracted").iterdir()
    (marker,) = [p for p in extracted.iterdir() if p.name.startswith(".")]
    x, _ = dm.split("train")[0]
    torch.testing.assert_close(x, _pil_reference(tmp_path / "src/tree/train/x/000.png"))

    stamp = marker.stat().st_mtime_ns
    sentinel = extracted / "tree" / "train" / "x" / ".sentinel"
    sentinel.write_text("kept unless re-extracted")
    dm = _dm(source="imagefolder", path=str(archive), root=str(cache))
    assert dm.class_names == ["x", "y"]
    assert marker.stat().st_mtime_ns == stamp and sentinel.exists()  # not extracted again
    assert len(list((cache / "extracted").iterdir())) == 1

    marker.unlink()  # as if extraction had been interrupted
    dm = _dm(source="imagefolder", path=str(archive), root=str(cache))
    assert len(dm.split("train")) + len(dm.split("val")) == 6
    assert marker.is_file() and not sentinel.exists()
    assert len(list((cache / "extracted").iterdir())) == 1


# -------------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize(("source", "folder"), [("cifar10", "cifar-10-batches-py"),
                                                ("cifar100", "cifar-100-python")])  # fmt: skip
def test_cifar_offline_without_files_is_a_clear_error(
    tmp_path: Path, source: str, folder: str
) -> None:
    dm = build_datamodule(DataConfig(source=source, root=str(tmp_path), download=False))
    with pytest.raises(DataError) as info:
        dm.setup()
    message = str(info.value)
    assert str(tmp_path / folder) in message and "data.root" in message
    assert "data.download=true" in message


def test_cifar_download_failure_does_not_suggest_the_setting_already_on(
    tmp_path: Path, monkeypatch
) -> None:
    from torchvision.datasets import CIFAR10

    def offline(self) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(CIFAR10, "download", offline)
    dm = build_datamodule(DataConfig(source="cifar10", root=str(tmp_path), download=True))
    with pytest.raises(DataError) as info:
        dm.setup()
    message = str(info.value)
    assert "data.download=true" not in message
    assert "network is unreachable" in message and "network access" in message
    assert str(tmp_path / "cifar-10-batches-py") in message


def test_cifar10_arrays_are_converted_per_item(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        batches[name] = (data, [k % 10 for k in range(4)])
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": batches[name][1]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR10_CLASSES}, f)
    dm = _dm(source="cifar10", root=str(tmp_path), download=False, val_fraction=0.25)
    assert dm.class_names == CIFAR10_CLASSES and dm.image_shape == (3, 32, 32)
    assert [len(dm.split(s)) for s in ("train", "val", "test")] == [15, 5, 4]
    x, y = _stack(dm.split("test"))
    data, labels = batches["test_batch"]
    expect = torch.from_numpy(data.reshape(4, 3, 32, 32)).float() / 255  # CIFAR rows are CHW
    torch.testing.assert_close(x, expect)
    assert y.tolist() == labels


# ------------------------------------------------------------------------- loaders


def _rows(x: torch.Tensor) -> list[tuple[float, ...]]:
    """The images of a batch as a sorted list of flat tuples (order-free comparison)."""
    return sorted(tuple(row) for row in x.flatten(1).tolist())


def test_dataloaders_batch_shapes_and_transform_only_on_train() -> None:
    dm = build_datamodule(
        DataConfig(source="synthetic", num_samples=50, image_size=4, batch_size=16),
        train_transform=torch.neg,
    )
    batches = list(dm.train_dataloader())
    assert [len(b[1]) for b in batches] == [16, 16, 4]  # 36 train samples, last batch kept
    assert batches[0][0].shape == (16, 3, 4, 4) and batches[0][1].dtype == torch.int64
    train_x, _ = _stack(dm.split("train"))
    # the loaded images are the transformed train images, in some order
    assert _rows(torch.cat([-b[0] for b in batches])) == _rows(train_x)
    val_x, _ = _stack(dm.split("val"))
    assert torch.equal(torch.cat([b[0] for b in dm.val_dataloader()]), val_x)  # untouched
    assert [len(b[1]) for b in dm.test_dataloader()] == [10]
    assert [len(b[1]) for b in dm.loader(dm.split("test"), batch_size=4)] == [4, 4, 2]
    dm.train_transform = None
    assert _rows(torch.cat([b[0] for b in dm.train_dataloader()])) == _rows(train_x)


def test_loader_honours_workers_and_eval_batch_size() -> None:
    dm = build_datamodule(
        DataConfig(
            source="digits", num_workers=2, pin_memory=True, batch_size=8, eval_batch_size=32
        )
    )
    loader = dm.loader(dm.split("test"))
    assert loader.num_workers == 2 and loader.pin_memory and loader.persistent_workers
    assert loader.batch_size == 32 and dm.train_dataloader().batch_size == 8
    assert not build_datamodule(DataConfig(source="digits")).val_dataloader().persistent_workers


def test_transform_dataset_wraps_only_its_base() -> None:
    base = torch.utils.data.TensorDataset(torch.zeros(3, 3, 2, 2), torch.arange(3))
    wrapped = TransformDataset(base, lambda x: x + 0.5)
    assert len(wrapped) == 3
    x, y = wrapped[1]
    assert torch.equal(x, torch.full((3, 2, 2), 0.5)) and int(y) == 1
    assert torch.equal(base[1][0], torch.zeros(3, 2, 2))


# ---------------------------------------------------------------------- augmentations


def test_augmentation_names() -> None:
    assert AUGMENTATIONS == ("none", "standard", "gaussian_noise", "augmix")
    assert build_augmentation("none", image_size=32) is None
    with pytest.raises(DataError, match="valid: none, standard, gaussian_noise, augmix"):
        build_augmentation("cutout", image_size=32)


def _crop_flip_candidates(image: torch.Tensor, pad: int) -> list[torch.Tensor]:
    """Every zero-padded crop of image's size, flipped or not (brute-force reference)."""
    c, h, w = image.shape
    padded = np.zeros((c, h + 2 * pad, w + 2 * pad), np.float32)
    padded[:, pad : pad + h, pad : pad + w] = image.numpy()
    out = []
    for top in range(2 * pad + 1):
        for left in range(2 * pad + 1):
            crop = torch.from_numpy(padded[:, top : top + h, left : left + w].copy())
            out += [crop, crop.flip(-1)]
    return out


@pytest.mark.parametrize(("size", "pad"), [(20, 4), (8, 1)])
def test_standard_is_a_padded_crop_and_flip(size: int, pad: int) -> None:
    torch.manual_seed(0)
    image = 0.01 + 0.99 * torch.rand(3, size, size)  # no zeros: padding is recognisable
    aug = build_augmentation("standard", image_size=size)
    candidates = _crop_flip_candidates(image, pad)
    seen = set()
    for _ in range(40):
        out = aug(image)
        assert out.shape == image.shape and out.min() >= 0 and out.max() <= 1
        matches = [k for k, cand in enumerate(candidates) if torch.equal(out, cand)]
        assert matches, "output is not a zero-padded crop (optionally flipped) of the input"
        seen.add(matches[0])
    assert len(seen) > 4  # random offsets and flips


def test_standard_without_padding_preserves_the_pixel_multiset() -> None:
    torch.manual_seed(1)
    image = torch.rand(3, 16, 16)
    aug = build_augmentation("standard", image_size=16, padding=0)
    flipped = False
    for _ in range(10):
        out = aug(image)
        assert torch.equal(torch.sort(out.flatten()).values, torch.sort(image.flatten()).values)
        flipped |= torch.equal(out, image.flip(-1))
    assert flipped


def test_gaussian_noise_std_and_clipping() -> None:
    torch.manual_seed(0)
    image = torch.full((3, 64, 64), 0.5)
    aug = build_augmentation("gaussian_noise", image_size=64, noise_std=0.1)
    noise = torch.stack([aug(image) for _ in range(8)]) - 0.5
    assert noise.std().item() == pytest.approx(0.1, rel=0.03)
    assert noise.mean().abs().item() < 0.005
    clipped = build_augmentation("gaussian_noise", image_size=64, noise_std=2.0)(image)
    assert clipped.min() == 0 and clipped.max() == 1


def test_augmix_output_is_a_quantized_image() -> None:
    torch.manual_seed(0)
    image = torch.rand(3, 16, 16)
    aug = build_augmentation("augmix", image_size=16, augmix_severity=3)
    outs = [aug(image) for _ in range(4)]
    for out in outs:
        assert out.shape == (3, 16, 16) and out.dtype == torch.float32
        assert out.min() >= 0 and out.max() <= 1
        torch.testing.assert_close(out * 255, (out * 255).round())
    assert any(not torch.allclose(out, image, atol=1 / 255) for out in outs)
    with pytest.raises(DataError, match="augmix_severity"):
        build_augmentation("augmix", image_size=16, augmix_severity=11)


# -------------------------------------------------------------------------- real data


@pytest.mark.slow
@pytest.mark.shared_data
def test_real_cifar10_jpeg_archive(shared_data: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    try:
        dm = _dm(
            source="imagefolder",
            path=str(shared_data / "cifar10-jpeg-q75.tar.gz"),
            root=str(cache),
            val_fraction=0.1,
        )
        assert dm.class_names == CIFAR10_CLASSES and dm.image_shape == (3, 32, 32)
        assert len(dm.split("train")) + len(dm.split("val")) == 50000
        assert len(dm.split("val")) == 5000 and len(dm.split("test")) == 10000
        x, y = dm.split("test")[0]
        assert x.shape == (3, 32, 32) and int(y) == 0  # test/airplane/0000.jpg comes first
    finally:
        shutil.rmtree(cache, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.shared_data
def test_real_lossless_npz(shared_data: Path) -> None:
    train = shared_data / "cifar10-train-lossless-5170.npz"
    test = shared_data / "cifar10-test-lossless-1017.npz"
    dm = _dm(source="npz", path=str(train), test_path=str(test))
    with np.load(test) as npz:
        ref_x, ref_y = npz["x"][:5], npz["y"][:5]
    assert dm.num_classes == 10 and len(dm.split("test")) == 1017
    x, y = _stack(torch.utils.data.Subset(dm.split("test"), range(5)))
    torch.testing.assert_close(x, torch.from_numpy(ref_x).permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(y, torch.from_numpy(ref_y).long())


def test_seeded_augmentation_differs_by_seed_and_item_and_repeats_exactly() -> None:
    from torch.utils.data import TensorDataset

    from introspect.data.images import SeededTransformDataset
    from introspect.data.seeding import derive_seed

    gen = torch.Generator().manual_seed(0)
    base = TensorDataset(torch.rand(3, 3, 16, 16, generator=gen), torch.zeros(3))

    def noise(x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn_like(x)

    # Seeds that differ only above bit 32 (as seed * 2**32 + index did) must still differ.
    seeds = [derive_seed(0, "augmix", 0), derive_seed(0, "augmix", 1), derive_seed(1, "augmix", 0)]
    assert len(set(seeds)) == 3 and all(0 <= s < 2**31 for s in seeds)
    views = [SeededTransformDataset(base, noise, seed=s) for s in seeds]
    for i in range(3):
        images = [v[i][0] for v in views]
        assert not torch.equal(images[0], images[1]) and not torch.equal(images[0], images[2])
        torch.testing.assert_close(views[0][i][0], images[0], rtol=0, atol=0)  # repeatable
    assert not torch.equal(views[0][0][0] - base[0][0], views[0][1][0] - base[1][0])
