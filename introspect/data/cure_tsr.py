"""The released CURE-TSR traffic-sign set (Temel et al. 2017) in its folder layout.

The release holds one folder per challenge type and level, ``ChallengeFree/`` and
``<Type>-<level>/`` (e.g. ``Decolorization-3/``), of images named
``<sequenceType>_<signType>_<challengeType>_<challengeLevel>_<index>.bmp`` where ``signType``
is the class (01-14), ``challengeType`` 00 (none) or 01-12 and ``challengeLevel`` 00 or 1-5.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch.utils.data import Dataset

from introspect.data.errors import DataError
from introspect.data.imagefolder import IMAGE_EXTENSIONS
from introspect.data.images import FileImages

# challenge name (this package) -> (folder stem, challengeType code) of the release
CHALLENGES: dict[str, tuple[str, int]] = {
    "decolorization": ("Decolorization", 1),
    "lens_blur": ("LensBlur", 2),
    "codec_error": ("CodecError", 3),
    "underexposure": ("Darkening", 4),
    "dirty_lens": ("DirtyLens", 5),
    "overexposure": ("Exposure", 6),
    "gaussian_blur": ("GaussianBlur", 7),
    "noise": ("Noise", 8),
    "rain": ("Rain", 9),
    "shadow": ("Shadow", 10),
    "snow": ("Snow", 11),
    "haze": ("Haze", 12),
}
NUM_CLASSES = 14
_NAME = re.compile(r"^(\d{2})_(\d{2})_(\d{2})_(\d{2})_(\d+)$")


def cure_tsr_folder(root: Path, challenge: str | None, level: int) -> Path:
    """The folder of ``challenge`` at ``level`` (1-5) under ``root``; ``None`` (with level 0)
    is ``ChallengeFree``."""
    if challenge is None:
        return root / "ChallengeFree"
    if challenge not in CHALLENGES:
        raise DataError(f"unknown CURE-TSR challenge {challenge!r}; valid: {', '.join(CHALLENGES)}")
    if not 1 <= level <= 5:
        raise DataError(f"CURE-TSR levels are 1-5, got {level}")
    return root / f"{CHALLENGES[challenge][0]}-{level}"


def cure_tsr_set(
    root: str | Path, challenge: str | None = None, level: int = 0, image_size: int = 32
) -> Dataset:
    """The images of one challenge type and level (``challenge=None``: challenge-free), resized
    to ``image_size``, labelled with their sign type 0-13. File names are checked against the
    folder: a file of another challenge or level, or of an unknown name, raises ``DataError``."""
    folder = cure_tsr_folder(Path(root).expanduser(), challenge, level)
    if not folder.is_dir():
        raise DataError(f"{folder} does not exist; root must hold the CURE-TSR folders")
    code = 0 if challenge is None else CHALLENGES[challenge][1]
    paths, labels = [], []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or path.name.startswith("."):
            continue
        match = _NAME.match(path.stem)
        if match is None:
            raise DataError(
                f"{path.name} is not a CURE-TSR file name "
                "(sequenceType_signType_challengeType_challengeLevel_index)"
            )
        sign, kind, lvl = (int(match.group(k)) for k in (2, 3, 4))
        if (kind, lvl) != (code, level) or not 1 <= sign <= NUM_CLASSES:
            raise DataError(
                f"{path} is challenge {kind:02d} level {lvl:02d} sign {sign:02d}, but its "
                f"folder holds challenge {code:02d} level {level:02d} (signs 01-14)"
            )
        paths.append(path)
        labels.append(sign - 1)
    if not paths:
        raise DataError(f"{folder} holds no images")
    return FileImages(paths, torch.tensor(labels), image_size)


def cure_tsr_cells(
    root: str | Path,
    challenges: list[str],
    levels: list[int],
    image_size: int = 32,
) -> dict[str, Dataset]:
    """``{"<challenge>/<level>": dataset}`` for every challenge and level (the layout of the
    corruption cells), plus ``"clean"``, the challenge-free images."""
    cells = {"clean": cure_tsr_set(root, None, 0, image_size)}
    for challenge in challenges:
        for level in levels:
            cells[f"{challenge}/{level}"] = cure_tsr_set(root, challenge, level, image_size)
    return cells
