"""The sharded feature cache: manifest, resuming after a failure, corrupted shards, memory."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import torch

import introspect.stages.heads as stage2_mod
from introspect.config import load_config
from introspect.gradients.cache import (
    FIELDS,
    CacheError,
    FeatureCache,
    InconsistentEntry,
    ShardPlan,
    weights_digest,
)
from introspect.jobs.settings import train_settings
from introspect.stages.stage1 import build_backbone, build_data

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
    dm = build_data(train_settings(cfg).stage1)
    backbone = build_backbone(train_settings(cfg).stage1, dm.num_classes, dm.image_shape).eval()
    assert len(dm.split("train")) == N_TRAIN
    return cfg, dm, backbone


def _features(tiny, root: Path, augment: str = "none") -> dict[str, torch.Tensor]:
    cfg, dm, backbone = tiny
    cache = FeatureCache(root)
    digest = weights_digest(backbone)
    return stage2_mod.split_features(
        dm,
        backbone,
        "train",
        augment,
        0,
        settings=train_settings(cfg).stage2,
        cache=cache,
        digest=digest,
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
    assert recipe["features"] == train_settings(cfg).stage2.features.extraction()
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


# --- A complete manifest or record that does not fit the layout and the shards' bytes. ---


@pytest.fixture
def reference(tiny, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The train features of a cache built from scratch."""
    return _features(tiny, tmp_path_factory.mktemp("fresh"))


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _point_at_shard_zero(record: dict, entry: Path) -> None:
    shard = json.loads((entry / "shard-00000.json").read_text())
    record.update({k: shard[k] for k in ("file", "bytes", "sha256")})


def _forge_shard(entry: Path, index: int, rows: slice, fields=FIELDS) -> None:
    """Keep ``rows`` of ``fields`` of shard ``index`` and make its record and the manifest
    vouch for the new bytes, so only the tensors tell."""
    path = entry / f"shard-{index:05d}.pt"
    tensors = torch.load(path, weights_only=True)
    buffer = io.BytesIO()
    torch.save({k: v[rows] if k in fields else v for k, v in tensors.items()}, buffer)
    data = buffer.getvalue()
    path.write_bytes(data)
    checks = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    _edit_json(entry / f"shard-{index:05d}.json", lambda r: r.update(checks))
    _edit_json(entry / "manifest.json", lambda m: m["shards"][index].update(checks))


def _notices(err: str) -> list[str]:
    return [line for line in err.splitlines() if "feature cache" in line]


def _assert_recomputed(
    tiny, root: Path, reference, extracted: list[int], capsys, shard: int, rows: int
) -> None:
    """The next run recomputes ``shard`` alone (``rows`` samples), says so in one line and
    returns the features of a fresh cache; the run after that extracts nothing."""
    entry = _entry(root)
    capsys.readouterr()
    extracted.clear()
    after = _features(tiny, root)
    (notice,) = _notices(capsys.readouterr().err)
    assert entry.name in notice and f"shard {shard}" in notice, notice
    assert sum(extracted) == rows
    for key, value in reference.items():
        assert torch.equal(after[key], value), key
    assert json.loads((entry / "manifest.json").read_text())["complete"]
    extracted.clear()
    again = _features(tiny, root)
    assert sum(extracted) == 0 and not _notices(capsys.readouterr().err)
    for key, value in reference.items():
        assert torch.equal(again[key], value), key


def test_manifest_missing_shards_is_recomputed_not_loaded(
    tiny, tmp_path: Path, reference, extracted: list[int], capsys
) -> None:
    _features(tiny, tmp_path)
    entry = _entry(tmp_path)
    _edit_json(entry / "manifest.json", lambda m: m.update(shards=m["shards"][:-1]))
    with pytest.raises(CacheError, match="shard 4"):
        FeatureCache(tmp_path).load(entry.name)
    _assert_recomputed(tiny, tmp_path, reference, extracted, capsys, 4, N_TRAIN - 4 * SHARD)


@pytest.mark.parametrize("where", ["manifest", "manifest and shard record"])
def test_record_naming_another_shards_file_is_recomputed_not_loaded(
    tiny, tmp_path: Path, reference, extracted: list[int], capsys, where: str
) -> None:
    _features(tiny, tmp_path)
    entry = _entry(tmp_path)
    _edit_json(entry / "manifest.json", lambda m: _point_at_shard_zero(m["shards"][1], entry))
    if where != "manifest":
        _edit_json(entry / "shard-00001.json", lambda r: _point_at_shard_zero(r, entry))
    with pytest.raises(CacheError, match="shard 1"):
        FeatureCache(tmp_path).load(entry.name)
    _assert_recomputed(tiny, tmp_path, reference, extracted, capsys, 1, SHARD)


def test_wrong_checksum_in_manifest_is_recomputed_not_stuck(
    tiny, tmp_path: Path, reference, extracted: list[int], capsys
) -> None:
    _features(tiny, tmp_path)
    entry = _entry(tmp_path)
    _edit_json(entry / "manifest.json", lambda m: m["shards"][2].update(sha256="0" * 64))
    with pytest.raises(CacheError, match="shard 2"):
        FeatureCache(tmp_path).load(entry.name)
    _assert_recomputed(tiny, tmp_path, reference, extracted, capsys, 2, SHARD)


@pytest.mark.parametrize("fields", [FIELDS, ("grad",)], ids=["every field", "one field"])
def test_shard_with_wrong_rows_is_recomputed_not_loaded(
    tiny, tmp_path: Path, reference, extracted: list[int], capsys, fields
) -> None:
    _features(tiny, tmp_path)
    entry = _entry(tmp_path)
    _forge_shard(entry, 3, slice(0, SHARD - 1), fields)  # checksums agree, 31 rows
    with pytest.raises(CacheError, match="shard 3"):
        FeatureCache(tmp_path).load(entry.name)
    _assert_recomputed(tiny, tmp_path, reference, extracted, capsys, 3, SHARD)


def _swap_first_two(m: dict) -> None:
    m["shards"][:2] = m["shards"][1::-1]


def _repeat_shard_zero(m: dict) -> None:
    m["shards"] = [m["shards"][0], *m["shards"][:-1]]


def _move_bound(m: dict) -> None:
    m["shards"][0]["stop"] = m["shards"][1]["start"] = SHARD - 1


def _halve_num_samples(m: dict) -> None:
    m["num_samples"] //= 2


@pytest.mark.parametrize(
    ("edit", "wrong"),
    [(_swap_first_two, {0, 1}), (_repeat_shard_zero, {1, 2, 3, 4}), (_move_bound, {0, 1}),
     (_halve_num_samples, {None})],
    ids=["swapped", "repeated", "moved bound", "num_samples"],
)  # fmt: skip
def test_load_rejects_a_manifest_that_does_not_fit_the_layout(
    tiny, tmp_path: Path, edit, wrong: set
) -> None:
    _features(tiny, tmp_path)
    entry = _entry(tmp_path)
    _edit_json(entry / "manifest.json", edit)
    with pytest.raises(InconsistentEntry) as err:
        FeatureCache(tmp_path).load(entry.name)
    assert {i for i, _ in err.value.problems} == wrong
    for i in wrong:
        assert ("the entry: " if i is None else f"shard {i}: ") in str(err.value)


def test_an_entry_still_inconsistent_after_recomputing_is_an_error(
    tiny, tmp_path: Path, monkeypatch, extracted: list[int], capsys
) -> None:
    _features(tiny, tmp_path)
    folder = _entry(tmp_path)
    loads: list[str] = []

    def never_consistent(self, key):
        loads.append(key)
        raise InconsistentEntry(folder, [(3, "injected")])

    monkeypatch.setattr(FeatureCache, "load", never_consistent)
    capsys.readouterr()
    extracted.clear()
    with pytest.raises(CacheError, match="still inconsistent after discarding") as err:
        _features(tiny, tmp_path)
    assert not isinstance(err.value, InconsistentEntry)
    assert loads == [folder.name] * 2 and sum(extracted) == SHARD  # shard 3, once
    (notice,) = _notices(capsys.readouterr().err)
    assert "shard 3: injected" in notice


@pytest.fixture
def hashed(monkeypatch) -> list[int]:
    """The length of everything SHA-256 hashes (as one argument) while the test runs."""
    lengths: list[int] = []
    original = hashlib.sha256

    def counting(data=b"", **kwargs):
        lengths.append(len(data))
        return original(data, **kwargs)

    monkeypatch.setattr(hashlib, "sha256", counting)
    return lengths


def test_a_process_hashes_each_shard_once(tiny, tmp_path: Path, hashed: list[int]) -> None:
    _features(tiny, tmp_path)  # extracts, finishes and loads: hashes as it writes
    shards = [p.stat().st_size for p in sorted(_entry(tmp_path).glob("shard-*.pt"))]
    assert len(shards) == 5 and sorted(n for n in hashed if n in shards) == sorted(shards)
    hashed.clear()
    _features(tiny, tmp_path)  # another run (cache): plans, then loads without hashing again
    assert sorted(n for n in hashed if n in shards) == sorted(shards)


def test_a_shard_replaced_after_plan_is_still_caught_by_load(tiny, tmp_path: Path) -> None:
    _features(tiny, tmp_path)
    entry = _entry(tmp_path)
    manifest = json.loads((entry / "manifest.json").read_text())
    cache = FeatureCache(tmp_path)
    plan = cache.plan(
        entry.name,
        manifest["recipe"],
        num_samples=manifest["num_samples"],
        shard_size=manifest["shard_size"],
    )
    assert plan.missing == ()
    shard = entry / "shard-00003.pt"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, new file
    (entry / "replacement").write_bytes(bytes(data))
    (entry / "replacement").replace(shard)
    with pytest.raises(InconsistentEntry, match="shard 3: .*checksum mismatch"):
        cache.load(entry.name)


DDP_SCRIPT = """
import json, os, sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

def run(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    import introspect.stages.heads as stage2_mod
    from introspect.config import load_config
    from introspect.gradients.cache import FeatureCache, weights_digest
    from introspect.jobs.settings import train_settings
    from introspect.stages.stage1 import build_backbone, build_data

    cfg = load_config({tiny!r})
    dm = build_data(train_settings(cfg).stage1)
    backbone = build_backbone(train_settings(cfg).stage1, dm.num_classes, dm.image_shape).eval()
    backbone.load_state_dict(torch.load({weights!r}, weights_only=True))
    extracted = []
    original = stage2_mod.iter_features

    def counting(*args, **kwargs):
        for batch in original(*args, **kwargs):
            extracted.append(len(batch["labels"]))
            yield batch

    stage2_mod.iter_features = counting
    cache = FeatureCache({root!r})
    tensors = stage2_mod.split_features(
        dm, backbone, "train", settings=train_settings(cfg).stage2, cache=cache,
        digest=weights_digest(backbone),
    )
    torch.save(tensors, out + f".rank{{rank}}.pt")
    counts = [None] * world
    dist.all_gather_object(counts, sum(extracted))
    if rank == 0:
        with open(out, "w") as f:
            json.dump({{"extracted": counts}}, f)
    dist.barrier()  # neither process tears the group down while the other still uses it
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(run, args=(2, int(sys.argv[1]), sys.argv[2]), nprocs=2)
"""


@pytest.mark.slow
def test_two_processes_agree_on_recomputing_an_inconsistent_entry(
    tiny, tmp_path: Path, reference, capfd
) -> None:
    from tests.conftest import run_two_process_script

    _, _, backbone = tiny
    root = tmp_path / "cache"
    _features(tiny, root)
    entry = _entry(root)
    # One inconsistency the manifest shows (shard 1) and one only the tensors show (shard 4).
    _edit_json(entry / "manifest.json", lambda m: m["shards"][1].update(sha256="0" * 64))
    _forge_shard(entry, 4, slice(1, None))
    torch.save(backbone.state_dict(), tmp_path / "weights.pt")
    script = DDP_SCRIPT.format(tiny=TINY, weights=str(tmp_path / "weights.pt"), root=str(root))
    capfd.readouterr()
    values = run_two_process_script(tmp_path, script)
    notices = _notices(capfd.readouterr().err)
    assert len(notices) == 2, notices  # rank zero's, one per discarding
    assert "shard 1" in notices[0] and "shard 4" in notices[1], notices
    assert sum(values["extracted"]) == SHARD + N_TRAIN - 4 * SHARD
    for rank in (0, 1):
        tensors = torch.load(tmp_path / f"values.json.rank{rank}.pt", weights_only=True)
        assert torch.equal(tensors["labels"], reference["labels"])
        for key, value in reference.items():
            torch.testing.assert_close(tensors[key], value, rtol=0, atol=1e-6)


def test_cache_holds_factors_within_the_byte_bound(tmp_path: Path) -> None:
    """4·(N + D) + 64 bytes per image at most (the materialized feature would take 4·N·D)."""
    cfg = load_config([*TINY, "stage2.shard_batches=9"])  # one shard of all 144 rows
    dm = build_data(train_settings(cfg).stage1)
    backbone = build_backbone(train_settings(cfg).stage1, dm.num_classes, dm.image_shape).eval()
    tensors = _features((cfg, dm, backbone), tmp_path)
    n, d = backbone.head.weight.shape
    on_disk = sum(p.stat().st_size for p in _entry(tmp_path).glob("shard-*.pt"))
    assert 4 * (n + d) < on_disk / N_TRAIN <= 4 * (n + d) + 64
    assert tensors["grad"].shape == (N_TRAIN, n) and tensors["penult"].shape == (N_TRAIN, d)
    # The factors are those of extract_features on the same images (unnormalized).
    from tests.test_factors import factors_of

    images = torch.stack([dm.split("train")[i][0] for i in range(8)])
    factors = factors_of(backbone, images, head=backbone.head, normalize="none")
    assert torch.allclose(tensors["grad"][:8], factors.g[:, 0], rtol=1e-5, atol=1e-7)
    assert torch.allclose(tensors["penult"][:8], factors.h, rtol=1e-5, atol=1e-7)


def test_load_fills_one_preallocated_tensor_without_concatenating(
    tiny, tmp_path: Path, monkeypatch
) -> None:
    first = _features(tiny, tmp_path)
    cfg, dm, backbone = tiny
    second = stage2_mod.split_features(
        dm,
        backbone,
        "val",
        settings=train_settings(cfg).stage2,
        cache=FeatureCache(tmp_path),
        digest=weights_digest(backbone),
    )
    keys = {json.loads((p / "manifest.json").read_text())["recipe"]["split"]: p.name
            for p in tmp_path.iterdir()}  # fmt: skip
    monkeypatch.setattr(torch, "cat", lambda *a, **k: pytest.fail("load concatenated"))
    cache, out = FeatureCache(tmp_path), {}
    total = N_TRAIN + len(second["labels"])
    a = cache.load(keys["train"], out=out, offset=0, total=total)
    b = cache.load(keys["val"], out=out, offset=N_TRAIN, total=total)
    for k in FIELDS:
        assert len(out[k]) == total
        assert torch.equal(out[k][:N_TRAIN], first[k]) and torch.equal(out[k][N_TRAIN:], second[k])
        assert a[k].data_ptr() == out[k].data_ptr()  # views of the one tensor, not copies
        assert b[k].data_ptr() == out[k][N_TRAIN:].data_ptr()
    with pytest.raises(InconsistentEntry, match="does not fit"):
        cache.load(keys["val"], out=out, offset=total - 1)


def test_a_manifest_whose_row_count_disagrees_is_detected(tiny, tmp_path: Path) -> None:
    _features(tiny, tmp_path)
    entry = _entry(tmp_path)
    _edit_json(entry / "manifest.json", lambda m: m.update(num_samples=m["num_samples"] + 1))
    with pytest.raises(InconsistentEntry, match="shard 4"):
        FeatureCache(tmp_path).load(entry.name)
