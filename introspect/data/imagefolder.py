"""ImageFolder trees (class folders of image files), given as a directory or a tar archive."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import warnings
from pathlib import Path

from introspect.data.errors import DataError

IMAGE_EXTENSIONS = frozenset(
    {".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp"}
)
MARKER = ".introspect-extracted"


def _hidden(path: Path) -> bool:
    return path.name.startswith(".")


def extract_archive(archive: Path, cache_root: Path) -> Path:
    """The directory ``archive`` is extracted into, under ``cache_root/extracted``.

    The directory is keyed by the archive's absolute path, size and modification time, and is
    reused when its completion marker exists; otherwise the archive is extracted (again) into a
    temporary directory that is moved into place once complete.
    """
    stat = archive.stat()
    ident = f"{archive.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    key = hashlib.sha256(ident.encode()).hexdigest()[:16]
    stem = archive.name.split(".")[0] or "archive"
    target = cache_root.expanduser() / "extracted" / f"{stem}-{key}"
    if (target / MARKER).is_file():
        return target
    if target.exists():  # an interrupted or foreign extraction: redo it
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=target.parent))
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(partial, filter="data")
        (partial / MARKER).write_text(f"{ident}\n")
        try:
            partial.rename(target)
        except OSError:
            if not (target / MARKER).is_file():  # not a concurrent extraction that finished first
                raise
            shutil.rmtree(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target


def _split_archive_path(path: Path) -> tuple[Path, Path] | None:
    """``(archive, inner)`` when ``path`` does not exist but names ``inner`` inside an existing
    archive file ``archive`` (e.g. ``images.tar.gz/train``); else None."""
    for parent in path.parents:
        if parent.is_file():
            return (parent, path.relative_to(parent)) if tarfile.is_tarfile(parent) else None
        if parent.exists():
            return None
    return None


def resolve_tree(path: str | Path, cache_root: Path, what: str) -> Path:
    """The directory of the tree at ``path``: the directory itself, its extracted archive, or a
    folder inside an archive (``archive.tar.gz/train``: that folder of the extracted tree).

    An archive holding a single top-level folder that has subfolders resolves to that folder.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        return path
    inside = None if path.exists() else _split_archive_path(path)
    if inside is not None:
        archive, inner = inside
        root = resolve_tree(archive, cache_root, what)
        if not (root / inner).is_dir():
            raise DataError(
                f"{what}={str(path)!r}: the archive {archive} has no folder {str(inner)!r}; "
                f"its top-level folders: {', '.join(subfolders(root))}"
            )
        return root / inner
    if not path.is_file():
        raise DataError(f"{what}={str(path)!r} does not exist; give a directory or a .tar.gz")
    if not tarfile.is_tarfile(path):
        raise DataError(
            f"{what}={str(path)!r} is neither a directory nor a tar archive (.tar.gz); give an "
            "ImageFolder tree or an archive of one"
        )
    try:
        root = extract_archive(path, cache_root)
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"cannot extract {path} into {cache_root}: {err}") from err
    entries = [p for p in root.iterdir() if not _hidden(p)]
    if len(entries) == 1 and entries[0].is_dir() and entries[0].name not in ("train", "test"):
        if subfolders(entries[0]):  # a wrapper folder around the tree, not a class folder
            return entries[0]
    return root


def subfolders(root: Path) -> list[str]:
    """Sorted names of the visible folders directly inside ``root``."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not _hidden(p))


def scan_classes(root: Path) -> dict[str, list[Path]]:
    """Class name -> sorted image files (searched recursively) of the tree at ``root``."""
    names = subfolders(root)
    if not names:
        raise DataError(
            f"{root} has no class folders; an ImageFolder tree holds one folder of images per "
            "class (optionally inside train/ and test/)"
        )
    stray = sorted(p.name for p in root.iterdir() if not p.is_dir() and not _hidden(p))
    if stray:
        warnings.warn(
            f"ignoring {len(stray)} file(s) at the top of {root} (not in a class folder): "
            f"{', '.join(stray[:5])}",
            stacklevel=2,
        )
    classes: dict[str, list[Path]] = {}
    for name in names:
        files: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(root / name):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            files.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
        others = sorted(str(f) for f in files if f.suffix.lower() not in IMAGE_EXTENSIONS)
        if others:
            raise DataError(
                f"class folder {root / name} holds {len(others)} file(s) that are not images "
                f"(e.g. {others[0]}); accepted extensions: {', '.join(sorted(IMAGE_EXTENSIONS))}. "
                "Remove them or move them out of the tree"
            )
        if not files:
            raise DataError(f"class folder {root / name} holds no images; remove it or fill it")
        classes[name] = sorted(files)
    return classes


def verify_images(
    classes: dict[str, list[Path]], *, skip: bool
) -> tuple[dict[str, list[Path]], list[Path]]:
    """Check every image file of ``classes`` once (its header and, where the format has them,
    checksums; nothing is decoded). Returns the classes without unreadable files and those
    files when ``skip``; otherwise raises a ``DataError`` naming the first one."""
    from PIL import Image

    bad: list[Path] = []
    kept: dict[str, list[Path]] = {}
    for name, files in classes.items():
        kept[name] = []
        for path in files:
            try:
                with Image.open(path) as img:
                    img.verify()
            except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ...
                if not skip:
                    raise DataError(
                        f"image file {path} cannot be read ({type(err).__name__}: {err}); "
                        "replace or remove it, or set data.skip_bad_files=true to skip "
                        "unreadable files"
                    ) from None
                bad.append(path)
            else:
                kept[name].append(path)
        if not kept[name]:
            raise DataError(f"class folder {name!r} holds no readable images; fix or remove it")
    return kept, bad
