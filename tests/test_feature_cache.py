"""The sharded feature cache: manifest, resuming after a failure, corrupted shards, memory."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import introspect.runs.stage2 as stage2_mod
from introspect.config import load_config
from introspect.gradients.cache import (
    FIELDS,
    CacheError,
    FeatureCache,
    ShardPlan,
    weights_digest,
)
from introspect.runs.pipeline import build_backbone, build_data

# 200 images: 40 test, 16 val, 144 train = shards of 2 batches of 16: four of 32 and one of 16.
TINY = [
    "data=synthetic",
    "data.num_samples=200",
    "data.image_size=8",
    "stage2.extract_batch_size=16",
    "stage2.shard_batches=2",
]
N_TRAIN, SHARD = 144, 32


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config(TINY)
    dm = build_data(cfg)
    backbone = build_backbone(cfg, dm.num_classes, dm.image_shape).eval()
    assert len(dm.split("train")) == N_TRAIN
    return cfg, dm, backbone


def _features(tiny, root: Path, augment: str = "none") -> dict[str, torch.Tensor]:
    cfg, dm, backbone = tiny
    cache = FeatureCache(root)
    digest = weights_digest(backbone)
    return stage2_mod.split_features(
        cfg, dm, backbone, "train", augment, 0, cache=cache, digest=digest
    )


def _entry(root: Path) -> Path:
    (entry,) = [p for p in root.iterdir() if p.is_dir()]
    return entry


@pytest.fixture
def extracted(monkeypatch) -> list[int]:
    """The size of every batch that goes through the backbone (cache hits add nothing)."""
    sizes: list[int] = []
    original = stage2_mod.iter_features

    def counting(*args, **kwargs):
        for batch in original(*args, **kwargs):
            sizes.append(len(batch["labels"]))
            yield batch

    monkeypatch.setattr(stage2_mod, "iter_features", counting)
    return sizes


def test_manifest_describes_every_shard(tiny, tmp_path: Path) -> None:
    cfg, dm, backbone = tiny
    tensors = _features(tiny, tmp_path)
    entry = _entry(tmp_path)
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["complete"] and manifest["key"] == entry.name
    recipe = manifest["recipe"]
    assert recipe["backbone"] == weights_digest(backbone)
    assert recipe["features"] == stage2_mod.feature_options(cfg)
    assert recipe["split"] == "train" and recipe["data"]["num_samples"] == 200
    assert (manifest["num_samples"], manifest["shard_size"], manifest["num_shards"]) == (
        N_TRAIN,
        SHARD,
        5,
    )
    bounds = [(s["start"], s["stop"]) for s in manifest["shards"]]
    assert bounds == [(0, 32), (32, 64), (64, 96), (96, 128), (128, 144)]
    for shard in manifest["shards"]:
        data = (entry / shard["file"]).read_bytes()
        assert shard["bytes"] == len(data)
        assert shard["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["fields"]["grad"]["shape"] == [tensors["grad"].shape[1]]
    train = dm.split("train")
    assert torch.equal(tensors["labels"], torch.tensor([int(train[i][1]) for i in range(N_TRAIN)]))


def test_interrupted_extraction_resumes_with_the_missing_shards(
    tiny, tmp_path: Path, monkeypatch, extracted: list[int]
) -> None:
    written: list[int] = []
    original = FeatureCache.write_shard

    def failing(self, plan, index, tensors):
        if len(written) == 2:
            raise RuntimeError("injected failure after two shards")
        original(self, plan, index, tensors)
        written.append(index)

    monkeypatch.setattr(FeatureCache, "write_shard", failing)
    # Augmented features: the rerun must reproduce the draws of the shards it recomputes.
    with pytest.raises(RuntimeError, match="injected"):
        _features(tiny, tmp_path / "cache", "gaussian_noise")
    entry = _entry(tmp_path / "cache")
    assert not json.loads((entry / "manifest.json").read_text())["complete"]
    finished = {p.name: p.stat().st_mtime_ns for p in entry.glob("shard-*.pt")}
    assert sorted(finished) == ["shard-00000.pt", "shard-00001.pt"]

    monkeypatch.setattr(FeatureCache, "write_shard", original)
    extracted.clear()
    resumed = _features(tiny, tmp_path / "cache", "gaussian_noise")
    assert sum(extracted) == N_TRAIN - 2 * SHARD  # only shards 2, 3 and 4
    assert {n: (entry / n).stat().st_mtime_ns for n in finished} == finished
    whole = _features(tiny, tmp_path / "uninterrupted", "gaussian_noise")
    for key, value in whole.items():
        assert torch.equal(resumed[key], value), key


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_shard_is_detected_and_recomputed(
    tiny, tmp_path: Path, extracted: list[int], damage: str
) -> None:
    before = _features(tiny, tmp_path)
    shard = _entry(tmp_path) / "shard-00003.pt"
    data = bytearray(shard.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF  # still loads: only the checksum tells
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="checksum mismatch.*run again"):
        FeatureCache(tmp_path).load(_entry(tmp_path).name)
    extracted.clear()
    after = _features(tiny, tmp_path)
    assert sum(extracted) == SHARD  # shard 3 alone
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_entry_of_another_recipe_or_layout_is_never_reused(
    tiny, tmp_path: Path, extracted: list[int]
) -> None:
    cfg = tiny[0]
    _features(tiny, tmp_path)
    manifest_path = _entry(tmp_path) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["recipe"]["features"]["loss"] = "mse"  # a foreign entry under this key
    manifest_path.write_text(json.dumps(manifest))
    extracted.clear()
    _features(tiny, tmp_path)
    assert sum(extracted) == N_TRAIN
    # Another shard layout (extraction batch size or shard_batches): the shards are redone.
    cfg.stage2.shard_batches = 3
    try:
        extracted.clear()
        _features(tiny, tmp_path)
    finally:
        cfg.stage2.shard_batches = 2
    assert sum(extracted) == N_TRAIN
    manifest = json.loads(manifest_path.read_text())
    assert manifest["shard_size"] == 48 and len(list(manifest_path.parent.glob("*.pt"))) == 3


def test_a_shard_is_written_every_shard_batches_batches(tiny, tmp_path: Path, monkeypatch) -> None:
    on_disk: list[int] = []
    original = stage2_mod.iter_features

    def watching(*args, **kwargs):
        for batch in original(*args, **kwargs):
            on_disk.append(len(list(tmp_path.glob("*/shard-*.pt"))))
            yield batch

    monkeypatch.setattr(stage2_mod, "iter_features", watching)
    _features(tiny, tmp_path)
    # Two batches per shard: before batch j, shards 0 .. j // 2 - 1 are on disk already.
    assert on_disk == [j // 2 for j in range(len(on_disk))] and len(on_disk) == 9


def test_write_shards_rejects_batches_that_do_not_fit_the_shards(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    plan = ShardPlan("k", num_samples=5, shard_size=3, missing=(0, 1))
    (tmp_path / "k").mkdir()

    def batches(sizes):
        return ({k: torch.zeros(n, 2) for k in FIELDS} for n in sizes)

    with pytest.raises(ValueError, match="ended before shards \\[1\\]"):
        cache.write_shards(plan, [0, 1], batches([2, 2]))
    with pytest.raises(ValueError, match="more samples than shards"):
        cache.write_shards(plan, [0, 1], batches([4, 2]))
