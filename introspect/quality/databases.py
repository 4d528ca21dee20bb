"""Readers of the released layouts of TID2013, KADID-10k and LIVE multiply distorted (LIVE MD).

Nothing is downloaded: ``path`` is the folder the user unpacked the release into.

- TID2013: ``mos_with_names.txt`` (``MOS name`` per line), ``mos_std.txt`` (one standard
  deviation per line, same order), ``distorted_images/iXX_DD_L.bmp`` and
  ``reference_images/IXX.BMP`` (file names matched case-insensitively). MOS: higher is better.
- KADID-10k: ``dmos.csv`` (columns ``dist_img,ref_img,dmos,var``) and ``images/``; the score is
  ``dmos`` (a mean opinion score on 1-5: higher is better), its std ``sqrt(var)``.
- LIVE MD: ``Part 1`` (``blurjpeg/``) and ``Part 2`` (``blurnoise/``), each with
  ``Imagelists.mat`` (``distimgs``) and ``Scores.mat`` (``DMOSscores``); the reference of
  ``name_....bmp`` is ``name.bmp`` in the same folder (a listed ``name.bmp`` is its own
  reference). DMOS: lower is better; no stds.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from introspect.quality.dataset import QualityDataError, QualitySet


def _folder(path: str | Path | None, name: str) -> Path:
    if path is None:
        raise QualityDataError(f"quality.path is not set: give the folder of the {name} release")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise QualityDataError(f"{name}: {root} is not a folder; set quality.path to the release")
    return root


def _require(path: Path, name: str) -> Path:
    if not path.exists():
        raise QualityDataError(f"{name}: {path} is missing; is quality.path the release folder?")
    return path


def _files_by_lower_name(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in folder.iterdir() if p.is_file()}


def _groups(ref_names: list[str]) -> tuple[np.ndarray, list[str]]:
    unique = sorted(set(ref_names))
    position = {name: i for i, name in enumerate(unique)}
    return np.asarray([position[n] for n in ref_names], dtype=np.int64), unique


@dataclass
class _Rows:
    """A database's images as read, one list entry per distorted image."""

    paths: list[Path] = field(default_factory=list)
    ref_names: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    levels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def add(self, path: Path, ref_name: str, kind: str, level: int, score: float) -> None:
        """Append one distorted image."""
        self.paths.append(path)
        self.ref_names.append(ref_name)
        self.kinds.append(kind)
        self.levels.append(level)
        self.scores.append(score)

    def quality_set(
        self, name: str, reference_of: Callable[[str], Path], **extra: Any
    ) -> QualitySet:
        """The ``QualitySet`` of the rows: references grouped by name, located by
        ``reference_of``; ``extra`` are its further fields (score name, stds, ...)."""
        index, unique = _groups(self.ref_names)
        return QualitySet(
            name=name,
            scores=np.asarray(self.scores),
            reference_index=index,
            distortions=self.kinds,
            levels=np.asarray(self.levels, dtype=np.int64),
            paths=self.paths,
            reference_paths=[reference_of(n) for n in unique],
            **extra,
        )


_TID_NAME = re.compile(r"^i(\d+)_(\d+)_(\d+)\.bmp$", re.IGNORECASE)


def load_tid2013(path: str | Path | None) -> QualitySet:
    """TID2013: 25 references x 24 distortions x 5 levels (3000 images), MOS and its std."""
    root = _folder(path, "TID2013")
    lines = _require(root / "mos_with_names.txt", "TID2013").read_text().split("\n")
    rows = [line.split() for line in lines if line.strip()]
    std_file = root / "mos_std.txt"
    stds = None
    if std_file.is_file():
        stds = np.asarray([float(v) for v in std_file.read_text().split()], dtype=np.float64)
        if len(stds) != len(rows):
            raise QualityDataError(
                f"TID2013: {len(rows)} scores in mos_with_names.txt but {len(stds)} in mos_std.txt"
            )
    distorted = _files_by_lower_name(_require(root / "distorted_images", "TID2013"))
    references = _files_by_lower_name(_require(root / "reference_images", "TID2013"))
    read = _Rows()
    for row in rows:
        if len(row) != 2:
            raise QualityDataError(f"TID2013: bad line {' '.join(row)!r} in mos_with_names.txt")
        score, name = row
        match = _TID_NAME.match(name)
        if match is None or name.lower() not in distorted:
            raise QualityDataError(f"TID2013: no distorted image {name!r}")
        ref = f"i{match.group(1)}.bmp"
        if ref not in references:
            raise QualityDataError(f"TID2013: no reference image {ref.upper()} for {name}")
        level = int(match.group(3))
        read.add(distorted[name.lower()], ref, f"tid{int(match.group(2)):02d}", level, float(score))
    return read.quality_set("tid2013", references.__getitem__, score_name="MOS", stds=stds)


def load_kadid10k(path: str | Path | None) -> QualitySet:
    """KADID-10k: 81 references x 25 distortions x 5 levels (10,125 images), DMOS and var."""
    root = _folder(path, "KADID-10k")
    table = _require(root / "dmos.csv", "KADID-10k")
    images = _require(root / "images", "KADID-10k")
    with table.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    needed = {"dist_img", "ref_img", "dmos", "var"}
    if not rows or not needed <= set(rows[0]):
        raise QualityDataError(f"KADID-10k: {table} must have the columns {sorted(needed)}")
    read, stds = _Rows(), []
    for row in rows:
        image = images / row["dist_img"]
        if not image.is_file():
            raise QualityDataError(f"KADID-10k: {image} is missing")
        parts = Path(row["dist_img"]).stem.split("_")  # I01_01_01
        kind = f"kadid{parts[1]}" if len(parts) == 3 else "unknown"
        level = int(parts[2]) if len(parts) == 3 else 0
        read.add(image, row["ref_img"], kind, level, float(row["dmos"]))
        stds.append(float(np.sqrt(max(float(row["var"]), 0.0))))
    return read.quality_set(
        "kadid10k",
        lambda n: _require(images / n, "KADID-10k"),
        score_name="DMOS (1-5, higher is better)",
        stds=np.asarray(stds),
    )


_LIVEMD_PARTS = (("Part 1", "blurjpeg"), ("Part 2", "blurnoise"))


def _mat_strings(value: np.ndarray) -> list[str]:
    """The strings of a MATLAB cell array as ``scipy.io.loadmat`` returns it."""
    out = []
    for item in np.asarray(value, dtype=object).reshape(-1):
        while isinstance(item, np.ndarray):
            item = item.reshape(-1)[0] if item.size else ""
        out.append(str(item))
    return out


def load_livemd(path: str | Path | None) -> QualitySet:
    """LIVE multiply distorted: blur+JPEG (Part 1) and blur+noise (Part 2), 225 images each,
    15 references; DMOS (lower is better)."""
    from scipy.io import loadmat

    root = _folder(path, "LIVE MD")
    if (root / "To_Release").is_dir():
        root = root / "To_Release"
    read = _Rows()
    for part, sub in _LIVEMD_PARTS:
        folder = _require(root / part, "LIVE MD")
        lists = loadmat(_require(folder / "Imagelists.mat", "LIVE MD"))
        marks = loadmat(_require(folder / "Scores.mat", "LIVE MD"))
        if "distimgs" not in lists or "DMOSscores" not in marks:
            raise QualityDataError(
                f"LIVE MD: {folder} needs distimgs in Imagelists.mat and DMOSscores in Scores.mat"
            )
        names = _mat_strings(lists["distimgs"])
        dmos = np.asarray(marks["DMOSscores"], dtype=np.float64).reshape(-1)
        if len(names) != len(dmos):
            raise QualityDataError(f"LIVE MD: {part} lists {len(names)} images, {len(dmos)} DMOS")
        files = _files_by_lower_name(_require(folder / sub, "LIVE MD"))
        for name, score in zip(names, dmos, strict=True):
            ref = f"{Path(name).stem.split('_')[0]}{Path(name).suffix}".lower()
            for wanted in (name.lower(), ref):
                if wanted not in files:
                    raise QualityDataError(f"LIVE MD: {folder / sub / wanted} is missing")
            read.add(files[name.lower()], str(files[ref]), sub, 0, float(score))
    return read.quality_set("livemd", Path, score_name="DMOS", higher_is_better=False)


DATABASES: dict[str, Callable[[str | Path | None], QualitySet]] = {
    "tid2013": load_tid2013,
    "kadid10k": load_kadid10k,
    "livemd": load_livemd,
}
