"""Per-split feature extraction and its on-disk cache: checksummed shards and a manifest per
entry, keyed by weights, feature options and data recipe, resumable shard by shard.

An entry ``<root>/<key>/`` holds:

* ``shard-NNNNN.pt``: the features of samples ``start .. stop - 1`` of the split (shard ``i``
  covers ``i·shard_size`` up to the next multiple or the end), a ``torch.save``'d dict of
  ``FIELDS``;
* ``shard-NNNNN.json``: that shard's record (index, start, stop, file size, SHA-256 and the
  dtype and per-sample shape of every field), written right after the shard by the process that
  extracted it, so any number of processes fill an entry without sharing a file;
* ``manifest.json``: format, key, the recipe (backbone digest, feature options, data identity,
  split, augmentation), ``num_samples``, ``shard_size``, ``num_shards``, ``complete`` and, once
  complete, every shard's record. Written before the first shard and again when all are done.

A shard counts as done only when its record matches its bytes, so an interrupted, truncated or
corrupted shard is computed again; an entry whose manifest names another recipe or layout is
never reused.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from introspect.gradients.extract import extract_with_outputs

FIELDS = ("grad", "penult", "logits", "labels")
# Layout and meaning of an entry; bumped when either changes, so older entries are rebuilt.
FORMAT = 2


class CacheError(RuntimeError):
    """A cache entry that cannot be read as planned; the message says the fix."""


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


def iter_features(
    backbone: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    feature_options: Mapping[str, Any],
    device: torch.device | str = "cpu",
    desc: str = "features",
    total: int | None = None,
    progress: bool = True,
) -> Iterator[dict[str, torch.Tensor]]:
    """Gradient features, penultimate activations, logits and labels (on CPU) of each batch as
    it is read, from one forward pass per batch. ``backbone`` must expose its ``head`` module."""
    for images, labels in tqdm(batches, desc=desc, total=total, leave=False, disable=not progress):
        images = images.to(device, non_blocking=True)
        grad, penult, logits = extract_with_outputs(
            backbone, images, head=backbone.head, **feature_options
        )
        values = (grad, penult, logits, labels)
        yield {k: v.detach().cpu() for k, v in zip(FIELDS, values, strict=True)}


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


def _read_json(path: Path) -> Any:
    """The JSON in ``path``, or ``None`` when it is absent or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class FeatureCache:
    """Feature tensors of every (split, recipe) entry under ``root``, as sharded entries.

    Single-process use: ``plan``, then ``write_shards`` for ``plan.missing`` and ``finish``
    when anything was missing, then ``load``. Several processes share the work by splitting
    ``plan.missing`` between them (``plan`` and ``finish`` on one process only). Extraction
    holds one shard in memory; ``load`` returns the whole entry.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()

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

    def _record(self, plan: ShardPlan, index: int) -> dict[str, Any] | None:
        """Shard ``index``'s record if it fits ``plan`` and the shard's bytes match it."""
        folder = self.entry_dir(plan.key)
        record = _read_json(folder / f"{self._shard_name(index)}.json")
        if not isinstance(record, dict):
            return None
        start, stop = plan.bounds(index)
        expected = {"index": index, "start": start, "stop": stop}
        if any(record.get(k) != v for k, v in expected.items()):
            return None
        try:
            data = (folder / str(record.get("file"))).read_bytes()
        except OSError:
            return None
        if len(data) != record.get("bytes") or hashlib.sha256(data).hexdigest() != record.get(
            "sha256"
        ):
            return None
        return record

    def plan(
        self, key: str, recipe: Mapping[str, Any], *, num_samples: int, shard_size: int
    ) -> ShardPlan:
        """Check entry ``key`` (every shard's checksum) and return which shards are missing.

        An entry made with another recipe, format or layout is removed first. Writes the
        manifest: complete when nothing is missing, else listing what is valid so far.
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
            shutil.rmtree(folder, ignore_errors=True)  # nothing in it can be trusted
            manifest = None
        folder.mkdir(parents=True, exist_ok=True)
        plan = ShardPlan(key, num_samples, shard_size, ())
        records = {i: self._record(plan, i) for i in range(plan.num_shards)}
        missing = tuple(i for i, r in records.items() if r is None)
        valid = [r for r in records.values() if r is not None]
        if manifest is None or missing or not manifest.get("complete"):
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
        _write_atomic(folder / f"{name}.pt", data)
        record = {
            "index": index,
            "file": f"{name}.pt",
            "start": start,
            "stop": stop,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
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
        records = [self._record(plan, i) for i in range(plan.num_shards)]
        absent = [i for i, r in enumerate(records) if r is None]
        if absent:
            raise CacheError(
                f"shards {absent} of {self.entry_dir(plan.key)} were not written or do not match "
                "their records; run again to compute them"
            )
        header = {k: manifest[k] for k in ("format", "key", "recipe", "num_samples", "shard_size")}
        valid = [r for r in records if r is not None]
        self._write_manifest(plan.key, self._describe(header, plan, valid, True))

    def load(self, key: str) -> dict[str, torch.Tensor]:
        """Every field of complete entry ``key``, each shard checked against the manifest."""
        folder = self.entry_dir(key)
        manifest = self._manifest(key)
        if manifest is None or not manifest.get("complete"):
            raise CacheError(f"{folder} is not a complete cache entry; run again to finish it")
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in FIELDS}
        for record in manifest["shards"]:
            path = folder / record["file"]
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != record["sha256"]:
                raise CacheError(
                    f"{path} changed after it was written (checksum mismatch); run again to "
                    "recompute it"
                )
            tensors = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            for k in FIELDS:
                parts[k].append(tensors[k])
        return {k: torch.cat(v) for k, v in parts.items()}
