"""The CURE-TSR folder loader on a tiny generated tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from introspect.data import DataError
from introspect.data.cure_tsr import cure_tsr_cells, cure_tsr_set


def _write(folder: Path, name: str, value: int, size: tuple[int, int] = (20, 24)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    array = np.full((*size, 3), value, dtype=np.uint8)
    Image.fromarray(array).save(folder / name)


def _tree(root: Path) -> Path:
    _write(root / "ChallengeFree", "01_03_00_00_0001.bmp", 10)
    _write(root / "ChallengeFree", "01_14_00_00_0002.bmp", 20)
    _write(root / "Haze-2", "02_05_12_02_0001.bmp", 30)
    _write(root / "Darkening-5", "01_01_04_05_0007.bmp", 40, (30, 30))
    return root


def test_cells_read_labels_levels_and_resize(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    clean = cure_tsr_set(root)
    assert len(clean) == 2 and [int(clean[i][1]) for i in range(2)] == [2, 13]
    image, label = cure_tsr_set(root, "haze", 2, image_size=16)[0]
    assert image.shape == (3, 16, 16) and int(label) == 4
    assert torch.allclose(image, torch.full_like(image, 30 / 255))
    cells = cure_tsr_cells(root, ["underexposure"], [5], image_size=8)
    assert set(cells) == {"clean", "underexposure/5"}
    assert cells["underexposure/5"][0][0].shape == (3, 8, 8)


def test_mismatched_or_missing_files_are_refused(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    _write(root / "Haze-2", "02_05_11_02_0002.bmp", 30)  # a snow file in the haze folder
    with pytest.raises(DataError, match="challenge 11"):
        cure_tsr_set(root, "haze", 2)
    with pytest.raises(DataError, match="does not exist"):
        cure_tsr_set(root, "haze", 3)
    with pytest.raises(DataError, match="unknown CURE-TSR challenge"):
        cure_tsr_set(root, "fog", 1)
    _write(root / "Snow-1", "picture.bmp", 1)
    with pytest.raises(DataError, match="not a CURE-TSR file name"):
        cure_tsr_set(root, "snow", 1)
