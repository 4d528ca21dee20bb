"""OOD sets by name (configs/ood) and unlabeled OOD sources (introspect.data.ood)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from introspect.config import ConfigError, load_config
from introspect.data import DataError
from introspect.data.ood import NO_LABEL, ood_source

NAMES = ["mnist", "svhn", "textures", "places365", "lsun", "tinyimagenet", "isun"]


def test_named_sets_expand_to_their_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTROSPECT_OOD_DIR", "/data/ood")
    cfg = load_config([f"scores.ood=[{','.join(NAMES)}]"])
    assert list(cfg.scores.ood) == NAMES
    assert cfg.scores.ood.svhn.source == "svhn" and cfg.scores.ood.svhn.split == "test"
    assert cfg.scores.ood.textures.path == "/data/ood/dtd/images"
    assert cfg.scores.ood.mnist.path.endswith("mnist-test.npz")
    assert {cfg.scores.ood[n].source for n in NAMES[2:]} == {"imagefolder"}
    with pytest.raises(ConfigError, match="Did you mean 'lsun'"):
        load_config(["scores.ood=[lsn]"])


def test_npz_without_labels_or_with_one_class_is_an_ood_set(tmp_path: Path) -> None:
    x = np.arange(5 * 6 * 6 * 3, dtype=np.uint8).reshape(5, 6, 6, 3)
    np.savez(tmp_path / "nolabel.npz", x=x)
    np.savez(tmp_path / "one.npz", x=x[:3, ..., 0], y=np.full(3, 7))
    np.savez(tmp_path / "two.npz", x=x, y=np.array([0, 1, 0, 1, 0]))
    images = ood_source("npz", str(tmp_path / "nolabel.npz"), None, "all", 4, tmp_path)
    assert images is not None and len(images) == 5
    image, label = images[2]
    assert image.shape == (3, 4, 4) and int(label) == NO_LABEL
    gray = ood_source(
        "npz", str(tmp_path / "one.npz"), str(tmp_path / "nolabel.npz"), "all", 6, tmp_path
    )
    assert gray is not None and len(gray) == 8
    first = gray[0][0]
    assert torch.equal(first[0], first[2]) and torch.allclose(
        first[0], torch.from_numpy(x[0, ..., 0]) / 255
    )
    # several classes: a labelled source, read the usual way
    assert ood_source("npz", str(tmp_path / "two.npz"), None, "all", 6, tmp_path) is None
    assert ood_source("cifar100", None, None, "test", 32, tmp_path) is None


def test_image_trees_of_any_layout(tmp_path: Path) -> None:
    flat = tmp_path / "LSUN"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(np.full((9, 7, 3), 40 * i, dtype=np.uint8)).save(flat / f"{i}.jpg")
    (flat / "notes.txt").write_text("not an image")
    images = ood_source("imagefolder", str(flat), None, "all", 5, tmp_path)
    assert images is not None and len(images) == 3 and images[1][0].shape == (3, 5, 5)
    nested = tmp_path / "dtd" / "images"
    for cls in ("banded", "woven"):
        (nested / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(nested / cls / "a.png")
    assert len(ood_source("imagefolder", str(nested), None, "all", 4, tmp_path)) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no image files"):
        ood_source("imagefolder", str(empty), None, "all", 4, tmp_path)


def test_missing_svhn_says_how_to_fetch_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="download=True"):
        ood_source("svhn", str(tmp_path), None, "test", 32, tmp_path)
