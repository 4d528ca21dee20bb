"""Sealed records: a results file carries a digest of its own content and of the run files it
was computed from (stage-1 checkpoints, stage-2 heads), and readers verify it before use.

The seal tells an edited record (a number changed by hand, a head swapped after the fact) from
the one the run wrote; it is tamper-evidence, not a signature. Records written before seals
existed carry none and read as ``unverified``. This module imports neither torch nor Lightning.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from introspect.runs.status import write_json_atomic

INTEGRITY = "integrity"
# Folders of a run directory whose files a record depends on.
SEALED_FOLDERS = ("checkpoints", "stage2")
# Files a record may seal beside itself (in its own folder): its per-image predictions.
BESIDE_FILES = ("predictions.npz",)
BESIDE = "beside"
VERIFIED, UNVERIFIED, MODIFIED = "verified", "unverified", "modified"


class RecordModifiedError(ValueError):
    """A record that does not match its seal; the message names the file and the way on."""


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file at ``path`` (read in blocks, so large checkpoints are cheap)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_sha256(record: dict[str, Any]) -> str:
    """The SHA-256 of the canonical JSON of ``record`` without its seal."""
    body = {k: v for k, v in record.items() if k != INTEGRITY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _sealed_files(run_dir: Path) -> dict[str, str]:
    """SHA-256 of every file in the run's sealed folders, by path relative to ``run_dir``."""
    files: dict[str, str] = {}
    for folder in SEALED_FOLDERS:
        root = run_dir / folder
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink() and not path.name.startswith("."):
                files[path.relative_to(run_dir).as_posix()] = file_sha256(path)
    return files


def seal(
    record: dict[str, Any], run_dir: Path, *, folder: Path | None = None, beside: Sequence[str] = ()
) -> dict[str, Any]:
    """Add the ``integrity`` block to ``record`` (in place; also returned): the digest of its
    content, of the checkpoints and heads in ``run_dir`` it was computed from and of the files
    ``beside`` (names among ``BESIDE_FILES``) in ``folder``, the record's own folder."""
    unknown = [name for name in beside if name not in BESIDE_FILES]
    if unknown or (beside and folder is None):
        raise ValueError(f"cannot seal {unknown or list(beside)} beside a record")
    canonical = json.loads(json.dumps({k: v for k, v in record.items() if k != INTEGRITY}))
    record[INTEGRITY] = {
        "content_sha256": content_sha256(canonical),
        "files": _sealed_files(Path(run_dir)),
    }
    if beside:
        assert folder is not None
        record[INTEGRITY][BESIDE] = {name: file_sha256(folder / name) for name in beside}
    return record


def write_sealed(
    path: Path, record: dict[str, Any], run_dir: Path, *, beside: Sequence[str] = ()
) -> dict[str, Any]:
    """Seal ``record`` against ``run_dir`` and the files ``beside`` it (see :func:`seal`) and
    write it atomically to ``path``; returns it."""
    write_json_atomic(path, seal(record, run_dir, folder=Path(path).parent, beside=beside))
    return record


def seals_beside(record: dict[str, Any], name: str) -> bool:
    """Whether ``record`` seals the file ``name`` beside it (verify the record first with
    :func:`check_record`: this reads the seal, it does not check it)."""
    block = record.get(INTEGRITY)
    return isinstance(block, dict) and name in (block.get(BESIDE) or {})


def _mismatch(record: dict[str, Any], run_dir: Path, folder: Path) -> str | None:
    """Why ``record`` (in ``folder``) does not match its seal, or None when it does."""
    block = record.get(INTEGRITY)
    if not isinstance(block, dict) or not isinstance(block.get("files"), dict):
        return "its integrity block is malformed"
    if block.get("content_sha256") != content_sha256(record):
        return "its content differs from its digest"
    root = run_dir.resolve()
    for name, digest in block["files"].items():
        path = (run_dir / str(name)).resolve()
        parts = Path(str(name)).parts
        if not parts or parts[0] not in SEALED_FOLDERS or not path.is_relative_to(root):
            return f"it names {name!r}, which is not a checkpoint or head of the run"
        if not path.is_file():
            return f"{name} is missing"
        if file_sha256(path) != digest:
            return f"{name} changed since"
    beside = block.get(BESIDE, {})
    if not isinstance(beside, dict):
        return "its integrity block is malformed"
    for name, digest in beside.items():
        if name not in BESIDE_FILES:
            return f"it names {name!r}, which is not a file a record seals beside it"
        if not (folder / name).is_file():
            return f"{name} beside it is missing"
        if file_sha256(folder / name) != digest:
            return f"{name} beside it changed since"
    return None


def check_record(path: Path, run_dir: Path, *, allow_modified: bool = False) -> str:
    """Verify the record at ``path`` of the run in ``run_dir``: ``"verified"``, ``"unverified"``
    (written before records were sealed, or no record there) or, with ``allow_modified``,
    ``"modified"``.

    Raises ``RecordModifiedError`` for a record that does not match its seal (unless
    ``allow_modified``) and for one that is no JSON object.
    """
    if not Path(path).exists():
        return UNVERIFIED
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise RecordModifiedError(f"{path} is not a readable results file ({err})") from None
    if not isinstance(record, dict):
        raise RecordModifiedError(f"{path} is not a results file (no JSON object)")
    if INTEGRITY not in record:
        return UNVERIFIED
    reason = _mismatch(record, Path(run_dir), Path(path).parent)
    if reason is None:
        return VERIFIED
    if allow_modified:
        return MODIFIED
    raise RecordModifiedError(
        f"{path} does not match its integrity digest ({reason}): it or the run's files were "
        "edited after the run; restore them, or pass --allow-modified to use them anyway "
        "(flagged as modified)"
    )


def record_note(state: str, path: Path | str) -> str | None:
    """The line tables carry for a record that is not verified (None when it is)."""
    if state == MODIFIED:
        return f"Note: {path} does not match its integrity digest; used with --allow-modified."
    if state == UNVERIFIED:
        return f"Note: {path} carries no integrity digest (written by an older version)."
    return None


def records_notes(states: dict[Path, str], name: str) -> list[str]:
    """Note lines for the records ``<run>/<name>`` of several runs (``states`` by run): one
    per modified record, one for all records without a digest."""
    notes = [
        f"Note: {run / name} does not match its integrity digest; used with --allow-modified "
        "(marked (modified))."
        for run, state in states.items()
        if state == MODIFIED
    ]
    older = [str(run / name) for run, state in states.items() if state == UNVERIFIED]
    if older:
        notes.append(
            f"Note: {len(older)} record(s) carry no integrity digest (written by an older "
            f"version), so they could not be verified: {', '.join(older)}."
        )
    return notes
