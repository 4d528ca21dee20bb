"""The on-disk feature cache (storage only): checksummed shards and a manifest per
entry, keyed by weights, feature options and data recipe, resumable shard by shard.

An entry ``<root>/<key>/`` holds:

* ``shard-NNNNN.pt``: the features of samples ``start .. stop - 1`` of the split (shard ``i``
  covers ``i·shard_size`` up to the next multiple or the end), a ``torch.save``'d dict of
  ``FIELDS``: the rank-one factors of the unnormalized last-layer gradient feature (``grad``:
  the loss gradients at the head output, ``Q·N`` values; ``penult``: the head input ``h``,
  ``D`` values) and the label, i.e. ``4·(N + D) + 8`` bytes per sample by default instead of
  the ``4·N·D`` of the materialized feature (``batches.features_of`` rebuilds the factors);
* ``shard-NNNNN.json``: that shard's record (index, start, stop, file, file size, SHA-256 and
  the dtype and per-sample shape of every field), written right after the shard by the process
  that extracted it, so any number of processes fill an entry without sharing a file;
* ``manifest.json``: format, key, the recipe (backbone digest, feature options, data identity,
  split, augmentation), ``num_samples``, ``shard_size``, ``num_shards``, ``complete`` and, once
  complete, every shard's record. Written before the first shard and again when all are done.

A shard counts as done only when its record fits the layout and matches its bytes, so an
interrupted, truncated or corrupted shard is computed again; an entry whose manifest names
another recipe or layout is never reused. A complete entry is used only when its manifest,
records, bytes and tensors agree with the layout (every shard listed once, in order, under its
own file, each field holding ``stop - start`` rows of the recorded dtype and shape): ``plan``
discards the shards a complete manifest does not vouch for and ``load`` raises
``InconsistentEntry`` naming the shards it finds wrong, for ``discard``; either says so in one
line on stderr, and the discarded shards are computed again. A ``FeatureCache`` hashes each
shard file once, unless the file is replaced or changed after that.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

FIELDS = ("grad", "penult", "labels")
# Layout and meaning of an entry; bumped when either changes, so older entries are rebuilt.
FORMAT = 3


class CacheError(RuntimeError):
    """A cache entry that cannot be read as planned; the message says the fix."""


# What is wrong with a complete entry: (shard index, or None for the entry as a whole, reason).
Problems = list[tuple[int | None, str]]


class InconsistentEntry(CacheError):
    """A complete entry whose manifest, records, bytes or tensors disagree with its layout;
    ``problems`` names the shards (``None``: the whole entry) and what is wrong with each."""

    def __init__(self, folder: Path, problems: Problems) -> None:
        self.folder, self.problems = folder, list(problems)
        super().__init__(folder, self.problems)

    def __str__(self) -> str:
        return (
            f"{self.folder} is inconsistent ({summarize(self.problems)}); run again to recompute it"
        )


class _Mismatch(Exception):
    """One shard or manifest field that disagrees with the layout (the message says how)."""


def summarize(problems: Problems) -> str:
    """``problems`` in one line: each reason once, with the shards it concerns."""
    groups: dict[str, list[int | None]] = {}
    for index, reason in problems:
        groups.setdefault(reason, []).append(index)
    return "; ".join(f"{_targets(indices)}: {reason}" for reason, indices in groups.items())


def _targets(indices: Iterable[int | None]) -> str:
    """``shard 3``, ``shards 1, 4`` or ``the entry`` (when ``None`` is among ``indices``)."""
    indices = set(indices)
    if None in indices:
        return "the entry"
    shards = sorted(i for i in indices if i is not None)
    return ("shard " if len(shards) == 1 else "shards ") + ", ".join(map(str, shards))


def _notice(folder: Path, problems: Problems) -> None:
    """One line on stderr: what is discarded of entry ``folder`` and why."""
    print(
        f"feature cache: {folder} is inconsistent ({summarize(problems)}); discarding and "
        f"recomputing {_targets(i for i, _ in problems)}",
        file=sys.stderr,
        flush=True,
    )


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of every parameter and buffer of ``module`` (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _canonical(payload: Mapping[str, Any]) -> Any:
    """``payload`` as it reads back from JSON (tuples as lists, unknown objects as strings)."""
    return json.loads(json.dumps(payload, sort_keys=True, default=str))


def cache_key(payload: Mapping[str, Any]) -> str:
    """A stable hex key of a JSON-serializable description."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class ShardPlan:
    """An entry's layout and the shards still to be computed (all shards: ``num_shards``)."""

    key: str
    num_samples: int
    shard_size: int
    missing: tuple[int, ...]

    @property
    def num_shards(self) -> int:
        """How many shards the entry has when complete."""
        return math.ceil(self.num_samples / self.shard_size)

    def bounds(self, index: int) -> tuple[int, int]:
        """``(start, stop)``: the samples of shard ``index``."""
        if not 0 <= index < self.num_shards:
            raise IndexError(f"shard {index} out of range for {self.num_shards} shards")
        start = index * self.shard_size
        return start, min(start + self.shard_size, self.num_samples)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` so that readers see either no file, the old one or all of the new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _identity(stat: os.stat_result) -> tuple[int, ...]:
    """What tells one version of a file from another: device, inode, size and times."""
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def _read_json(path: Path) -> Any:
    """The JSON in ``path``, or ``None`` when it is absent or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class FeatureCache:
    """Feature tensors of every (split, recipe) entry under ``root``, as sharded entries.

    Single-process use: ``plan``, then ``write_shards`` for ``plan.missing`` and ``finish``
    when anything was missing, then ``load`` (on ``InconsistentEntry``: ``discard`` its problems
    and start again). Several processes share the work by splitting ``plan.missing`` between
    them (``plan``, ``finish`` and ``discard`` on one process only). Extraction holds one shard
    in memory; ``load`` returns the whole entry.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()
        # SHA-256 of each shard file this object wrote or hashed, with the file's identity then:
        # a file still of that identity is not hashed again (this cache replaces files, never
        # rewrites them in place).
        self._digests: dict[Path, tuple[tuple[int, ...], str]] = {}

    def entry_dir(self, key: str) -> Path:
        """The folder of entry ``key``."""
        return self.root / key

    @staticmethod
    def _shard_name(index: int) -> str:
        return f"shard-{index:05d}"

    def _manifest(self, key: str) -> dict[str, Any] | None:
        manifest = _read_json(self.entry_dir(key) / "manifest.json")
        return manifest if isinstance(manifest, dict) else None

    def _write_manifest(self, key: str, manifest: Mapping[str, Any]) -> None:
        _write_atomic(self.entry_dir(key) / "manifest.json", _json_bytes(dict(manifest)))

    def _check_layout(self, plan: ShardPlan, index: int, record: Any, source: str) -> None:
        """Raise ``_Mismatch`` unless ``record`` (read from ``source``) places shard ``index``
        where ``plan`` does."""
        if not isinstance(record, dict):
            raise _Mismatch(f"{source} holds no record of it")
        start, stop = plan.bounds(index)
        expected = {
            "index": index,
            "start": start,
            "stop": stop,
            "file": f"{self._shard_name(index)}.pt",
        }
        for name, value in expected.items():
            if record.get(name) != value:
                raise _Mismatch(f"{source} has {name}={record.get(name)!r}, expected {value!r}")

    def _checked_bytes(self, key: str, record: Mapping[str, Any], *, read: bool) -> bytes:
        """The bytes of ``record``'s file (when ``read``, else none); raises ``_Mismatch``
        unless they are what the record says."""
        path = self.entry_dir(key) / record["file"]
        known = self._digests.get(path)
        try:
            if not read and known is not None and known[0] == _identity(path.stat()):
                data, size, digest = b"", known[0][2], known[1]
            else:
                with path.open("rb") as fh:
                    identity = _identity(os.fstat(fh.fileno()))
                    data = fh.read()
                size = len(data)
                if known is None or known[0] != identity:
                    known = identity, hashlib.sha256(data).hexdigest()
                    self._digests[path] = known
                digest = known[1]
        except OSError:
            raise _Mismatch(f"{record['file']} is missing or unreadable") from None
        if size != record.get("bytes") or digest != record.get("sha256"):
            raise _Mismatch(f"{record['file']} does not match its record (checksum mismatch)")
        return data

    def _record(self, plan: ShardPlan, index: int) -> dict[str, Any]:
        """Shard ``index``'s own record; raises ``_Mismatch`` unless it fits ``plan`` and the
        shard's bytes match it."""
        name = self._shard_name(index)
        record = _read_json(self.entry_dir(plan.key) / f"{name}.json")
        if record is None:
            raise _Mismatch(f"{name}.json is missing or unreadable")
        self._check_layout(plan, index, record, f"{name}.json")
        self._checked_bytes(plan.key, record, read=False)
        return record

    def _records(self, plan: ShardPlan) -> tuple[dict[int, dict[str, Any]], Problems]:
        """The valid records of ``plan``'s shards, and what is wrong with the others."""
        records: dict[int, dict[str, Any]] = {}
        problems: Problems = []
        for index in range(plan.num_shards):
            try:
                records[index] = self._record(plan, index)
            except _Mismatch as err:
                problems.append((index, str(err)))
        return records, problems

    @staticmethod
    def _unvouched(
        manifest: Mapping[str, Any], plan: ShardPlan, records: Mapping[int, Mapping[str, Any]]
    ) -> Problems:
        """The valid shards (``records``) that a complete ``manifest`` does not list as they are."""
        listed = manifest.get("shards")
        if (
            manifest.get("num_shards") != plan.num_shards
            or not isinstance(listed, list)
            or len(listed) > plan.num_shards
        ):
            reason = f"the manifest does not list {plan.num_shards} shards"
            return [(index, reason) for index in records]
        problems: Problems = []
        for index, record in records.items():
            if index >= len(listed):
                problems.append((index, "not listed in the manifest"))
                continue
            entry = listed[index] if isinstance(listed[index], dict) else {}
            own = {k: v for k, v in record.items() if k != "fields"}
            differ = sorted(k for k in own.keys() | entry.keys() if own.get(k) != entry.get(k))
            if differ:
                problems.append((index, f"the manifest's record differs in {', '.join(differ)}"))
            elif record.get("fields") != manifest.get("fields"):
                problems.append((index, "its fields differ from the manifest's"))
        return problems

    def _remove_shard(self, key: str, index: int) -> None:
        name = self._shard_name(index)
        for suffix in (".json", ".pt"):
            path = self.entry_dir(key) / f"{name}{suffix}"
            path.unlink(missing_ok=True)
            self._digests.pop(path, None)

    def _remove_entry(self, key: str) -> None:
        folder = self.entry_dir(key)
        shutil.rmtree(folder, ignore_errors=True)
        self._digests = {p: d for p, d in self._digests.items() if p.parent != folder}

    def plan(
        self, key: str, recipe: Mapping[str, Any], *, num_samples: int, shard_size: int
    ) -> ShardPlan:
        """Check entry ``key`` (every shard's record and checksum) and return which shards are
        missing.

        An entry made with another recipe, format or layout is removed first. The shards of a
        complete entry that its manifest does not list exactly as their records are, or whose
        records do not match their bytes, are discarded (one line on stderr) and missing.
        Writes the manifest: complete when nothing is missing, else listing what is valid.
        """
        if num_samples < 1 or shard_size < 1:
            raise ValueError(
                f"num_samples={num_samples} and shard_size={shard_size} must be positive"
            )
        folder = self.entry_dir(key)
        header = {
            "format": FORMAT,
            "key": key,
            "recipe": _canonical(recipe),
            "num_samples": num_samples,
            "shard_size": shard_size,
        }
        manifest = self._manifest(key)
        if manifest is None or any(manifest.get(k) != v for k, v in header.items()):
            self._remove_entry(key)  # nothing in it can be trusted
            manifest = None
        folder.mkdir(parents=True, exist_ok=True)
        plan = ShardPlan(key, num_samples, shard_size, ())
        records, invalid = self._records(plan)
        complete = manifest is not None and manifest.get("complete") is True
        if complete:
            assert manifest is not None
            problems = invalid + self._unvouched(manifest, plan, records)
            if problems:
                _notice(folder, problems)
                for index, _ in problems:
                    assert index is not None
                    self._remove_shard(key, index)
                    records.pop(index, None)
        missing = tuple(i for i in range(plan.num_shards) if i not in records)
        if not complete or missing:
            valid = [records[i] for i in sorted(records)]
            self._write_manifest(key, self._describe(header, plan, valid, not missing))
        return ShardPlan(key, num_samples, shard_size, missing)

    @staticmethod
    def _describe(
        header: Mapping[str, Any], plan: ShardPlan, records: list[dict[str, Any]], complete: bool
    ) -> dict[str, Any]:
        fields = records[0]["fields"] if records else None
        shards = [{k: v for k, v in r.items() if k != "fields"} for r in records]
        return {
            **header,
            "num_shards": plan.num_shards,
            "complete": complete,
            "fields": fields,
            "shards": shards,
        }

    def write_shard(self, plan: ShardPlan, index: int, tensors: Mapping[str, torch.Tensor]) -> None:
        """Store shard ``index`` of ``plan`` (``tensors``: its rows of each field) and record."""
        start, stop = plan.bounds(index)
        rows = {k: len(tensors[k]) for k in FIELDS}
        if set(rows.values()) != {stop - start}:
            raise ValueError(f"shard {index} holds samples {start}..{stop - 1}, got rows {rows}")
        buffer = io.BytesIO()
        torch.save({k: tensors[k].contiguous() for k in FIELDS}, buffer)
        data = buffer.getvalue()
        name = self._shard_name(index)
        folder = self.entry_dir(plan.key)
        path = folder / f"{name}.pt"
        _write_atomic(path, data)
        digest = hashlib.sha256(data).hexdigest()
        self._digests[path] = _identity(path.stat()), digest
        record = {
            "index": index,
            "file": f"{name}.pt",
            "start": start,
            "stop": stop,
            "bytes": len(data),
            "sha256": digest,
            "fields": {
                k: {"dtype": str(tensors[k].dtype).removeprefix("torch."),
                    "shape": list(tensors[k].shape[1:])}
                for k in FIELDS
            },
        }  # fmt: skip
        _write_atomic(folder / f"{name}.json", _json_bytes(record))

    def write_shards(
        self,
        plan: ShardPlan,
        indices: Sequence[int],
        batches: Iterable[Mapping[str, torch.Tensor]],
    ) -> None:
        """Cut ``batches`` (the samples of shards ``indices``, in order) into those shards and
        store each as soon as it is full."""
        pending = list(indices)
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in FIELDS}
        filled = 0
        for batch in batches:
            offset, n = 0, len(batch["labels"])
            while offset < n:
                if not pending:
                    raise ValueError(f"more samples than shards {list(indices)} hold")
                start, stop = plan.bounds(pending[0])
                take = min(n - offset, stop - start - filled)
                for k in FIELDS:
                    parts[k].append(batch[k][offset : offset + take])
                offset, filled = offset + take, filled + take
                if filled == stop - start:
                    shard = {k: torch.cat(v) for k, v in parts.items()}
                    self.write_shard(plan, pending.pop(0), shard)
                    parts, filled = {k: [] for k in FIELDS}, 0
        if pending:
            raise ValueError(f"the batches ended before shards {pending} were full")

    def finish(self, plan: ShardPlan) -> None:
        """Mark entry ``plan.key`` complete in its manifest, with every shard's record.

        Raises ``CacheError`` when a shard has no valid record (a process did not write it).
        """
        manifest = self._manifest(plan.key)
        if manifest is None:
            raise CacheError(f"{self.entry_dir(plan.key)} lost its manifest.json; run again")
        records, invalid = self._records(plan)
        if invalid:
            raise CacheError(
                f"shards {[i for i, _ in invalid]} of {self.entry_dir(plan.key)} were not written "
                "or do not match their records; run again to compute them"
            )
        header = {k: manifest[k] for k in ("format", "key", "recipe", "num_samples", "shard_size")}
        valid = [records[i] for i in sorted(records)]
        self._write_manifest(plan.key, self._describe(header, plan, valid, True))

    def _layout(self, key: str) -> tuple[ShardPlan, dict[str, Any], list[Any]]:
        """The layout, fields and shard list of complete entry ``key``'s manifest; raises
        ``_Mismatch`` when the manifest is absent, incomplete or not of this entry's form."""
        manifest = self._manifest(key)
        if manifest is None or manifest.get("complete") is not True:
            raise _Mismatch("no complete manifest.json")
        if manifest.get("format") != FORMAT or manifest.get("key") != key:
            raise _Mismatch("the manifest names another format or key")
        num_samples, shard_size = manifest.get("num_samples"), manifest.get("shard_size")
        if (
            type(num_samples) is not int
            or type(shard_size) is not int
            or min(num_samples, shard_size) < 1
        ):
            raise _Mismatch(f"num_samples={num_samples!r} and shard_size={shard_size!r}")
        plan = ShardPlan(key, num_samples, shard_size, ())
        fields, shards = manifest.get("fields"), manifest.get("shards")
        if manifest.get("num_shards") != plan.num_shards:
            raise _Mismatch(
                f"num_shards={manifest.get('num_shards')!r}, expected {plan.num_shards}"
            )
        if not isinstance(shards, list) or len(shards) > plan.num_shards:
            raise _Mismatch(f"the manifest does not list {plan.num_shards} shards")
        if not isinstance(fields, dict) or any(
            not isinstance(fields.get(k), dict) or fields[k].keys() != {"dtype", "shape"}
            for k in FIELDS
        ):
            raise _Mismatch("the manifest does not describe every field")
        return plan, fields, shards

    def _load_shard(
        self, plan: ShardPlan, index: int, record: Any, fields: Mapping[str, Any]
    ) -> dict[str, torch.Tensor]:
        """The tensors of shard ``index`` as the manifest lists it (``record``); raises
        ``_Mismatch`` unless they are what the record and ``fields`` say."""
        self._check_layout(plan, index, record, "the manifest")
        data = self._checked_bytes(plan.key, record, read=True)
        try:
            tensors = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as err:  # any unpickling failure: the shard is unusable
            raise _Mismatch(f"{record['file']} does not load ({type(err).__name__})") from None
        if not isinstance(tensors, dict):
            raise _Mismatch(f"{record['file']} does not hold a dict of fields")
        start, stop = plan.bounds(index)
        for name in FIELDS:
            tensor = tensors.get(name)
            if not isinstance(tensor, torch.Tensor) or tensor.ndim == 0:
                raise _Mismatch(f"{record['file']} has no rows of {name}")
            if len(tensor) != stop - start:
                raise _Mismatch(f"{name} has {len(tensor)} rows, expected {stop - start}")
            found = {
                "dtype": str(tensor.dtype).removeprefix("torch."),
                "shape": list(tensor.shape[1:]),
            }
            if found != fields[name]:
                raise _Mismatch(f"{name} is {found}, the manifest says {fields[name]}")
        return tensors

    def load(
        self,
        key: str,
        *,
        out: dict[str, torch.Tensor] | None = None,
        offset: int = 0,
        total: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Every field of complete entry ``key``, in sample order, read shard by shard into one
        tensor per field (each shard's bytes hashed once, then released).

        With ``out``, the rows go to ``out[name][offset : offset + num_samples]`` (fields
        missing from ``out`` are first allocated with ``total`` rows, as the manifest describes
        them) and those views are returned, so several entries fill one tensor.

        Raises ``InconsistentEntry`` unless the manifest lists the entry's shards in order, each
        under its own file with the bytes it holds, and every field of each shard has one row
        per sample of the shard, of the dtype and shape the manifest records.
        """
        try:
            plan, fields, shards = self._layout(key)
            out = self._buffers(plan, fields, {} if out is None else out, offset, total)
        except _Mismatch as err:
            raise InconsistentEntry(self.entry_dir(key), [(None, str(err))]) from None
        problems: Problems = []
        for index in range(plan.num_shards):
            try:
                if index >= len(shards):
                    raise _Mismatch("not listed in the manifest")
                tensors = self._load_shard(plan, index, shards[index], fields)
            except _Mismatch as err:
                problems.append((index, str(err)))
                continue
            start, stop = plan.bounds(index)
            for k in FIELDS:
                out[k][offset + start : offset + stop] = tensors[k]
            del tensors
        if problems:
            raise InconsistentEntry(self.entry_dir(key), problems)
        return {k: out[k][offset : offset + plan.num_samples] for k in FIELDS}

    @staticmethod
    def _buffers(
        plan: ShardPlan,
        fields: Mapping[str, Any],
        out: dict[str, torch.Tensor],
        offset: int,
        total: int | None,
    ) -> dict[str, torch.Tensor]:
        """``out`` with every field allocated (``total`` rows, default: the entry's); raises
        ``_Mismatch`` when a field there cannot hold the entry's rows at ``offset``."""
        for name in FIELDS:
            spec = fields[name]
            if name not in out:
                dtype = getattr(torch, str(spec["dtype"]), None)
                if not isinstance(dtype, torch.dtype):
                    raise _Mismatch(f"the manifest names no dtype for {name}: {spec['dtype']!r}")
                rows = plan.num_samples if total is None else total
                out[name] = torch.empty((rows, *spec["shape"]), dtype=dtype)
            buffer = out[name]
            found = {
                "dtype": str(buffer.dtype).removeprefix("torch."),
                "shape": list(buffer.shape[1:]),
            }
            if found != spec or not 0 <= offset <= len(buffer) - plan.num_samples:
                raise _Mismatch(
                    f"{name} ({spec}, {plan.num_samples} rows) does not fit rows {offset}.. of "
                    f"a buffer {found} of {len(buffer)} rows"
                )
        return out

    def discard(self, key: str, problems: Problems) -> None:
        """Forget what ``problems`` (from ``InconsistentEntry``) name of entry ``key``, so that
        the next ``plan`` lists it as missing, and say so in one line on stderr."""
        folder = self.entry_dir(key)
        _notice(folder, problems)
        manifest = self._manifest(key)
        indices = {index for index, _ in problems}
        if manifest is None or None in indices:
            self._remove_entry(key)
            return
        for index in indices:
            assert index is not None
            self._remove_shard(key, index)
        self._write_manifest(key, {**manifest, "complete": False})
