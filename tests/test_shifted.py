"""Shifted evaluation data: on-the-fly corrupted splits, their cache, the official CIFAR-10-C
arrays and the evaluation splits a run builds from its config."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import introspect.corruptions.transforms as corruptions_mod
from introspect.config import ConfigError, load_config
from introspect.corruptions.cells import is_cell
from introspect.corruptions.transforms import corrupt
from introspect.data import DataError
from introspect.data.shifted import (
    CorruptedDataset,
    cell_seed,
    corrupted_splits,
    load_official,
)
from introspect.jobs.settings import train_settings
from introspect.stages.splits import evaluation_splits
from introspect.stages.stage1 import build_data


def _base(n: int = 23, size: int = 8, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 3, size, size, generator=gen), torch.arange(n) % 4)


def _reference(base: TensorDataset, name: str, severity: int, seed: int, chunk: int):
    """Each chunk corrupted directly with ``corrupt`` and the documented per-chunk seed."""
    images, _ = base.tensors
    start = cell_seed(name, severity, seed)
    return torch.cat(
        [
            corrupt(images[i : i + chunk], name, severity, seed=start + k)
            for k, i in enumerate(range(0, len(images), chunk))
        ]
    )


@pytest.mark.parametrize("name", ["gaussian_noise", "glass_blur", "contrast"])
def test_items_equal_direct_corruption_of_their_chunk(name: str) -> None:
    base = _base()
    ds = CorruptedDataset(base, name, 3, seed=5, chunk_size=10)
    expected = _reference(base, name, 3, 5, 10)
    got = torch.stack([ds[i][0] for i in range(len(ds))])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert [int(ds[i][1]) for i in range(len(ds))] == (torch.arange(23) % 4).tolist()
    assert len(ds) == 23 and ds.split_name == f"{name}/3"
    torch.testing.assert_close(ds[-1][0], expected[-1], rtol=0, atol=0)
    with pytest.raises(IndexError):
        ds[23]


def test_items_do_not_depend_on_order_batching_or_workers() -> None:
    base = _base(n=37)
    expected = _reference(base, "shot_noise", 2, 0, 8)
    ds = CorruptedDataset(base, "shot_noise", 2, chunk_size=8, keep_chunks=1)
    order = torch.randperm(37, generator=torch.Generator().manual_seed(1)).tolist()
    for i in order:  # random access evicts and recomputes chunks
        torch.testing.assert_close(ds[i][0], expected[i], rtol=0, atol=0)
    fresh = CorruptedDataset(base, "shot_noise", 2, chunk_size=8)
    loader = DataLoader(fresh, batch_size=5, num_workers=2)
    got = torch.cat([x for x, _ in loader])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_cells_differ_by_seed_and_by_cell() -> None:
    base = _base()
    a = CorruptedDataset(base, "gaussian_noise", 1, seed=0)[0][0]
    b = CorruptedDataset(base, "gaussian_noise", 1, seed=1)[0][0]
    c = CorruptedDataset(base, "gaussian_noise", 2, seed=0)[0][0]
    assert not torch.equal(a, b) and not torch.equal(a, c)


def test_disk_cache_returns_the_computed_images_without_recomputing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = _base()
    expected = _reference(base, "impulse_noise", 4, 2, 10)
    calls: list[int] = []
    real = corruptions_mod.corrupt

    def counting(images, *args, **kwargs):
        calls.append(len(images))
        return real(images, *args, **kwargs)

    monkeypatch.setattr(corruptions_mod, "corrupt", counting)
    first = CorruptedDataset(base, "impulse_noise", 4, seed=2, chunk_size=10, cache_dir=tmp_path)
    torch.testing.assert_close(torch.stack([x for x, _ in first]), expected, rtol=0, atol=0)
    assert calls == [10, 10, 3]
    files = sorted(tmp_path.rglob("*.pt"))
    assert len(files) == 3
    again = CorruptedDataset(base, "impulse_noise", 4, seed=2, chunk_size=10, cache_dir=tmp_path)
    torch.testing.assert_close(torch.stack([x for x, _ in again]), expected, rtol=0, atol=0)
    assert calls == [10, 10, 3]  # every chunk came from disk
    # A truncated cache file is detected and recomputed, with the same result.
    files[0].write_bytes(files[0].read_bytes()[:50])
    third = CorruptedDataset(base, "impulse_noise", 4, seed=2, chunk_size=10, cache_dir=tmp_path)
    torch.testing.assert_close(torch.stack([x for x, _ in third]), expected, rtol=0, atol=0)
    assert len(calls) == 4
    # Other clean pixels or another seed never hit the cache.
    other = CorruptedDataset(_base(seed=9), "impulse_noise", 4, seed=2, chunk_size=10,
                             cache_dir=tmp_path)  # fmt: skip
    other[0]
    CorruptedDataset(base, "impulse_noise", 4, seed=3, chunk_size=10, cache_dir=tmp_path)[0]
    assert len(calls) == 6


def test_bad_cells_are_clear_errors() -> None:
    with pytest.raises(DataError, match="unknown corruption 'fgo'"):
        CorruptedDataset(_base(), "fgo", 1)
    with pytest.raises(DataError, match="1..5"):
        CorruptedDataset(_base(), "fog", 6)
    splits = corrupted_splits(_base(), ["fog", "snow"], [1, 5])
    assert list(splits) == ["fog/1", "fog/5", "snow/1", "snow/5"]
    assert all(is_cell(n) for n in splits) and not is_cell("jpeg_q75") and not is_cell("a/b")


def _official_dir(root: Path, n: int = 6, names=("fog", "snow")) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir()
    labels = rng.integers(0, 10, n)
    np.save(root / "labels.npy", np.tile(labels, 5))
    for name in names:
        np.save(root / f"{name}.npy", rng.integers(0, 256, (5 * n, 4, 4, 3), dtype=np.uint8))
    return root


def test_official_arrays_are_split_by_severity(tmp_path: Path) -> None:
    root = _official_dir(tmp_path / "c")
    cells = load_official(root, ["fog", "snow"], [2, 5], num_classes=10)
    assert list(cells) == ["fog/2", "fog/5", "snow/2", "snow/5"]
    fog = np.load(root / "fog.npy")
    labels = np.load(root / "labels.npy")[:6]
    for i in range(6):
        image, label = cells["fog/5"][i]
        expected = torch.from_numpy(fog[4 * 6 + i]).permute(2, 0, 1).float() / 255
        torch.testing.assert_close(image, expected, rtol=0, atol=0)
        assert int(label) == labels[i]
    assert len(cells["snow/2"]) == 6


def test_official_arrays_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        load_official(tmp_path / "nowhere", ["fog"], [1])
    root = _official_dir(tmp_path / "c")
    with pytest.raises(DataError, match=r"lacks \['frost.npy'\]"):
        load_official(root, ["fog", "frost"], [1])
    with pytest.raises(DataError, match="labels in 0..9 but the data has 3 classes|3 classes"):
        load_official(root, ["fog"], [1], num_classes=3)
    np.save(root / "snow.npy", np.zeros((7, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="snow.npy must be uint8"):
        load_official(root, ["snow"], [1])
    np.save(root / "labels.npy", np.arange(30))
    with pytest.raises(DataError, match="different labels"):
        load_official(root, ["fog"], [1])


def _npz(path: Path, n: int, size: int, classes: int, names=None) -> Path:
    rng = np.random.default_rng(1)
    arrays = {"x": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
              "y": np.arange(n) % classes}  # fmt: skip
    if names is not None:
        arrays["class_names"] = np.array(names)
    np.savez(path, **arrays)
    return path


SYNTH = ["data=synthetic", "data.num_samples=60", "data.image_size=8", "data.num_classes=4"]


def test_evaluation_splits_of_a_config(tmp_path: Path) -> None:
    extra = _npz(tmp_path / "extra.npz", 12, 8, 4)
    cfg = load_config([*SYNTH, "eval.corruptions=[fog,contrast]", "eval.severities=[2]",
                       "eval.extra.shifted.source=npz", f"eval.extra.shifted.path={extra}",
                       "eval.extra.shifted.split=all"])  # fmt: skip
    dm = build_data(train_settings(cfg).stage1)
    splits = evaluation_splits(train_settings(cfg).eval, train_settings(cfg).stage1.data, dm)
    assert list(splits) == ["clean", "shifted", "fog/2", "contrast/2"]
    assert len(splits["shifted"]) == 12 and len(splits["fog/2"]) == len(dm.split("test"))
    test = dm.split("test")
    clean = torch.stack([test[i][0] for i in range(len(test))])
    expected = _reference(TensorDataset(clean, torch.zeros(len(clean))), "fog", 2, 0, 256)
    torch.testing.assert_close(splits["fog/2"][0][0], expected[0], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["eval.extra.x.classes=2"], "unknown key 'eval.extra.x.classes'"),
        (["eval.extra.x.source=npz", "eval.extra.x.path=EXTRA3"], "3 classes but the run's"),
        (["eval.extra.x.source=npz", "eval.extra.x.path=EXTRA_BIG"], "set data.image_size"),
        (["eval.extra.x.source=npz", "eval.extra.x.path=NAMED"], r"classes \['a', 'b'"),
        (["eval.extra.x.source=npz", "eval.extra.x.path=missing.npz"], "eval.extra.x: data.path"),
        (
            ["eval.extra.x.source=npz", "eval.extra.x.path=EXTRA3", "eval.extra.x.split=tst"],
            "valid: train, val, test, all",
        ),
        (["eval.corruptions=[fog]", "eval.source=official"], "needs eval.official_dir"),
        (["eval.corruptions=[fog]", "eval.official_dir=/x"], "only read with eval.source"),
        (["eval.corruptions=[fog]", "eval.chunk_size=0"], "0 for 'eval.chunk_size'"),
    ],
)
def test_bad_evaluation_splits_fail_before_any_work(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    paths = {
        "EXTRA3": _npz(tmp_path / "e3.npz", 9, 8, 3),
        "EXTRA_BIG": _npz(tmp_path / "big.npz", 8, 16, 4),
        "NAMED": _npz(tmp_path / "named.npz", 8, 8, 4, ["a", "b", "c", "d"]),
    }
    args = []
    for o in overrides:
        for key, path in paths.items():
            o = o.replace(f"={key}", f"={path}")
        args.append(o.replace("=missing.npz", f"={tmp_path / 'missing.npz'}"))
    try:
        cfg = load_config([*SYNTH, "data.image_size=null", *args])
    except ConfigError as err:
        assert re.search(message, str(err)), str(err)
        return
    dm = build_data(train_settings(cfg).stage1)
    with pytest.raises(DataError, match=message):
        evaluation_splits(train_settings(cfg).eval, train_settings(cfg).stage1.data, dm)


def test_official_source_in_a_config(tmp_path: Path) -> None:
    root = _official_dir(tmp_path / "c", n=6)
    cfg = load_config(
        [*SYNTH, "data.num_classes=10", "eval.corruptions=[snow]", "eval.severities=[1,3]",
         "eval.source=official", f"eval.official_dir={root}"]
    )  # fmt: skip
    splits = evaluation_splits(
        train_settings(cfg).eval,
        train_settings(cfg).stage1.data,
        build_data(train_settings(cfg).stage1),
    )
    assert list(splits) == ["clean", "snow/1", "snow/3"] and len(splits["snow/3"]) == 6


@pytest.mark.slow
@pytest.mark.shared_data
def test_real_experiment_splits_and_jpeg_accuracy(shared_data: Path) -> None:
    """The cifar10_resnet20 splits: the 1,017 exact test images halved into a calibration
    (val) split and the clean test split, the 10,000-image JPEG test set on which the released
    ResNet-20 scores 81.03 % (data README), and 75 generated cells."""
    from introspect.stages.stage1 import build_backbone

    cfg = load_config(["experiment=cifar10_resnet20"])
    dm = build_data(train_settings(cfg).stage1)
    assert len(dm.split("train")) == 5170  # val_from=test: stage 2 sees every training image
    assert len(dm.split("val")) == 509  # the calibration split, held out of the test images
    splits = evaluation_splits(train_settings(cfg).eval, train_settings(cfg).stage1.data, dm)
    assert len(splits) == 2 + 75
    assert len(splits["clean"]) == 508 and len(splits["jpeg_q75"]) == 10000
    assert sum(is_cell(n) for n in splits) == 75
    backbone = build_backbone(train_settings(cfg).stage1, dm.num_classes, dm.image_shape).eval()
    loader = DataLoader(splits["jpeg_q75"], batch_size=500)
    correct = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((backbone(x).argmax(1) == y).sum())
    assert abs(100 * correct / 10000 - 81.03) <= 0.05


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["cifar10_resnet20", "cifar10_resnet4b_adv"])
def test_real_experiments_without_the_data_stop_with_the_path(
    experiment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import train

    monkeypatch.setenv("INTROSPECT_SHARED_DATA", str(tmp_path / "absent"))
    rc = train.main([f"experiment={experiment}", f"run.root={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "absent/cifar10-train-lossless-5170.npz" in err and "does not exist" in err
    assert not (tmp_path / "runs").exists()  # nothing written
