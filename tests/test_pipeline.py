"""The two-stage pipeline end to end on tiny data: frozen backbone, cache, results, reloads."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import introspect.stages.heads as stage2_mod
from introspect.config import load_config, load_run_config
from introspect.gradients import extract
from introspect.jobs import train as pipeline
from introspect.jobs.settings import train_settings
from introspect.jobs.train import run
from introspect.runs.csvlog import read_long_csv
from introspect.runs.trainer import build_trainer
from introspect.stages.stage1 import build_backbone, build_data

REPO = Path(__file__).resolve().parents[1]

TINY = [
    "data=synthetic",
    "data.num_samples=160",
    "data.image_size=8",
    "stage1.epochs=2",
    "stage2.head.epochs=2",
    "stage2.head.hidden=[32,16]",
    "eval.corruptions=[gaussian_noise,contrast]",
    "eval.severities=[1,5]",
    "trainer.enable_progress_bar=false",
]


def _stage2(cfg, dm, backbone, run_dir: Path):
    """Stage 2 as the train job calls it."""
    trainer = partial(build_trainer, train_settings(cfg).job.trainer, run_dir, loggers=[])
    return stage2_mod.stage2(train_settings(cfg).stage2, dm, backbone, run_dir, trainer)


def _cfg(tmp_path: Path, *extra: str):
    return load_config(
        [*TINY, f"run.dir={tmp_path / 'run'}", f"stage2.cache_dir={tmp_path / 'cache'}", *extra]
    )


def _write_npz(path: Path, n: int, size: int, classes: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    np.savez(path, x=x, y=np.arange(n) % classes)
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("pipeline")
    # An extra named split from another source: 30 random images of another size (resized).
    extra = _write_npz(tmp / "extra.npz", 30, 12, 10, 0)
    cfg = _cfg(
        tmp,
        "eval.extra.other.source=npz",
        f"eval.extra.other.path={extra}",
        "eval.extra.other.split=all",
    )
    results = run(cfg)
    return cfg, Path(cfg.run.dir), results


@pytest.mark.slow
def test_results_json_has_every_split_head_and_metric(finished) -> None:
    cfg, run_dir, results = finished
    on_disk = json.loads((run_dir / "results.json").read_text())
    assert on_disk["splits"].keys() == results["splits"].keys()
    cells = [f"{c}/{s}" for c in ("gaussian_noise", "contrast") for s in (1, 5)]
    assert list(on_disk["splits"]) == ["clean", "other", *cells]
    dm = build_data(train_settings(cfg).stage1)
    for name, entry in on_disk["splits"].items():
        # split=all: every image of the extra file
        assert entry["num_samples"] == (30 if name == "other" else len(dm.split("test")))
        for head in ("feedforward", "introspective", "control"):
            m = entry[head]
            assert {"acc", "ece", "nll", "brier"} <= m.keys()
            assert 0 <= m["acc"] <= 1 and 0 <= m["ece"] <= 1
    # summary = mean over the corruption cells (neither clean nor the extra split)
    shifted = [v for k, v in on_disk["splits"].items() if k in cells]
    for head, metrics in on_disk["summary"].items():
        for name, value in metrics.items():
            assert value == pytest.approx(sum(s[head][name] for s in shifted) / len(shifted))
    # per-corruption and per-severity means over exactly their cells
    for key, part, groups in (
        ("by_corruption", 0, ("gaussian_noise", "contrast")),
        ("by_severity", 1, ("1", "5")),
    ):
        assert sorted(on_disk[key]) == sorted(groups)
        for group in groups:
            shifted_cells = {k: v for k, v in on_disk["splits"].items() if k in cells}
            members = [v for k, v in shifted_cells.items() if k.split("/")[part] == group]
            assert len(members) == 2
            for head, metrics in on_disk[key][group].items():
                for name, value in metrics.items():
                    assert value == pytest.approx(sum(c[head][name] for c in members) / 2)
    table = (run_dir / "table.md").read_text()
    assert "| corruption |" in table and "| severity |" in table and "| contrast/5 |" in table
    assert on_disk["run"]["config"]["run"]["dir"] == str(run_dir)
    assert (run_dir / "table.md").is_file() and (run_dir / "reliability_clean.png").is_file()


@pytest.mark.slow
def test_clean_metrics_match_a_direct_computation(finished) -> None:
    cfg, run_dir, results = finished
    dm = build_data(train_settings(cfg).stage1)
    cfg2 = load_run_config(run_dir)
    cfg2.backbone.checkpoint = str(run_dir / "checkpoints" / "stage1-best.ckpt")
    backbone = build_backbone(train_settings(cfg2).stage1, dm.num_classes, dm.image_shape).eval()
    heads = stage2_mod.load_heads(
        backbone,
        run_dir,
        dm.num_classes,
        head=train_settings(cfg2).stage2.head,
        features=train_settings(cfg2).stage2.features,
    )
    test = dm.split("test")
    x = torch.stack([test[i][0] for i in range(len(test))])
    y = torch.as_tensor([int(test[i][1]) for i in range(len(test))])
    with torch.no_grad():
        logits = backbone(x)
    ff_acc = (logits.argmax(1) == y).float().mean().item()
    ff_nll = F.cross_entropy(logits, y).item()
    clean = results["splits"]["clean"]
    assert clean["feedforward"]["acc"] == pytest.approx(ff_acc, abs=1e-6)
    assert clean["feedforward"]["nll"] == pytest.approx(ff_nll, rel=1e-4)
    feats = extract(backbone, x)  # the default feature: all-ones CE, last layer, L2
    with torch.no_grad():
        intro_acc = (heads["introspective"].head(feats).argmax(1) == y).float().mean().item()
    assert clean["introspective"]["acc"] == pytest.approx(intro_acc, abs=1e-6)


@pytest.mark.slow
def test_backbone_stays_frozen_through_stage_two(tmp_path: Path, monkeypatch) -> None:
    cfg = _cfg(tmp_path, "stage2.control=false", "stage2.control_hp=false", "eval.corruptions=[]")
    snapshots = {}
    original = stage2_mod.stage2

    def spy(settings, dm, backbone, run_dir, trainer, device):
        snapshots["before"] = {k: v.clone() for k, v in backbone.state_dict().items()}
        heads = original(settings, dm, backbone, run_dir, trainer, device)
        snapshots["after"] = backbone.state_dict()
        snapshots["grad"] = [p.requires_grad for p in backbone.parameters()]
        snapshots["training"] = backbone.training
        return heads

    monkeypatch.setattr(pipeline, "stage2", spy)
    results = run(cfg)
    assert set(results["splits"]["clean"]) == {
        "num_samples", "feedforward", "feedforward_ts", "introspective", "introspective_ts"
    }  # fmt: skip
    for k, v in snapshots["before"].items():
        assert torch.equal(v, snapshots["after"][k]), k
    assert not any(snapshots["grad"]) and snapshots["training"] is False


@pytest.fixture
def extractions(monkeypatch) -> list[str]:
    """The ``desc`` of every feature extraction stage 2 runs (cache hits are not counted)."""
    calls: list[str] = []
    original = stage2_mod.iter_features

    def counting(*args, **kwargs):
        calls.append(kwargs.get("desc", ""))
        return original(*args, **kwargs)

    monkeypatch.setattr(stage2_mod, "iter_features", counting)
    return calls


def test_feature_cache_is_reused_and_keyed(tmp_path: Path, extractions: list[str]) -> None:
    calls = extractions
    cfg = _cfg(tmp_path, "eval.corruptions=[]", "stage2.control=false")
    dm = build_data(train_settings(cfg).stage1)
    backbone = build_backbone(train_settings(cfg).stage1, dm.num_classes, dm.image_shape).eval()
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    _stage2(cfg, dm, backbone, run_dir)
    assert len(calls) == 2  # train and val extracted once
    _stage2(cfg, dm, backbone, run_dir)
    assert len(calls) == 2  # both from the cache
    cfg.stage2.features.include_bias = True
    _stage2(cfg, dm, backbone, run_dir)
    assert len(calls) == 4  # other feature options: extracted again
    with torch.no_grad():
        next(backbone.parameters()).add_(0.01)
    _stage2(cfg, dm, backbone, run_dir)
    assert len(calls) == 6  # other weights: extracted again
    # a truncated cache shard is detected and recomputed
    for f in (tmp_path / "cache").glob("*/shard-*.pt"):
        f.write_bytes(f.read_bytes()[:100])
    _stage2(cfg, dm, backbone, run_dir)
    assert len(calls) == 8


def test_augmented_recipe_extracts_each_pass(tmp_path: Path, extractions: list[str]) -> None:
    calls = extractions
    cfg = _cfg(
        tmp_path,
        "stage2.splits=[train,val]",
        "stage2.augment=gaussian_noise",
        "stage2.passes=2",
        "stage2.include_clean=true",
        "stage2.control=false",
    )
    dm = build_data(train_settings(cfg).stage1)
    backbone = build_backbone(train_settings(cfg).stage1, dm.num_classes, dm.image_shape).eval()
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    _stage2(cfg, dm, backbone, run_dir)
    # (clean + 2 noisy passes) x (train, val); no separate validation when val is trained on
    assert sorted(calls) == sorted(
        f"features {s}/{a}/{k}"
        for s in ("train", "val")
        for a, k in (("none", 0), ("gaussian_noise", 0), ("gaussian_noise", 1))
    )


def test_failed_run_leaves_no_results_json(tmp_path: Path, monkeypatch) -> None:
    import introspect.stages.evaluate as report

    def boom(*args, **kwargs):
        raise RuntimeError("injected failure while plotting")

    monkeypatch.setattr(report, "reliability_grid", boom)
    cfg = _cfg(tmp_path, "eval.corruptions=[]")
    with pytest.raises(RuntimeError, match="injected"):
        run(cfg)
    assert not (Path(cfg.run.dir) / "results.json").exists()


@pytest.mark.slow
def test_evaluate_py_reevaluates_on_other_splits(finished) -> None:
    cfg, run_dir, results = finished
    training_log = (run_dir / "logs" / "metrics.csv").read_text()
    record = (run_dir / "results.json").read_bytes()
    proc = subprocess.run(
        [sys.executable, str(REPO / "evaluate.py"), f"run={run_dir}",
         "eval.corruptions=[impulse_noise]", "eval.severities=[3]",
         "trainer.enable_progress_bar=false"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = run_dir / "evaluations" / "corruptions=impulse_noise_severities=3"
    again = json.loads((out / "results.json").read_text())
    assert list(again["splits"]) == ["clean", "other", "impulse_noise/3"]
    # the run's record and training log are kept; the re-evaluation logs in its own folder
    assert (run_dir / "results.json").read_bytes() == record
    assert (run_dir / "logs" / "metrics.csv").read_text() == training_log
    assert "eval/impulse_noise/3" in (out / "logs" / "metrics.csv").read_text()
    for split in ("clean", "other"):  # the saved config keeps the extra split
        for head in ("feedforward", "introspective", "control"):
            for metric in ("acc", "ece", "nll"):
                assert again["splits"][split][head][metric] == pytest.approx(
                    results["splits"][split][head][metric], abs=1e-6
                )


@pytest.mark.slow
def test_class_count_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "backbone.num_classes=3")
    with pytest.raises(pipeline.PipelineError, match="backbone.num_classes=3.*10 classes"):
        run(cfg)
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.corruptions=[gausian_noise]", r"gausian_noise.*Did you mean 'gaussian_noise'"),
        ("eval.corruptions=[contrast,contrast]", r"more than once"),
    ],
)
def test_bad_evaluation_cells_fail_before_any_work(tmp_path: Path, override: str, message) -> None:
    from introspect.config import ConfigError
    from introspect.data import DataError

    # A misspelt corruption stops when the config is composed; a repeated one when the
    # evaluation splits are checked; both before any run directory exists.
    with pytest.raises((ConfigError, DataError), match=message):
        run(_cfg(tmp_path, override))
    assert not (tmp_path / "run").exists()


def test_logs_reach_csv_and_offline_wandb(tmp_path: Path, monkeypatch) -> None:

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    cfg = _cfg(
        tmp_path,
        "eval.corruptions=[contrast]",
        "eval.severities=[3]",
        "logger=wandb",
        "trainer.log_every_n_steps=1",
    )
    results = run(cfg)
    run_dir = Path(cfg.run.dir)
    logged = {name: value for _, name, value in read_long_csv(run_dir / "logs" / "metrics.csv")}
    for split in ("clean", "contrast/3"):
        for head in ("feedforward", "introspective", "control"):
            key = f"eval/{split}/{head}/acc"
            assert logged[key] == pytest.approx(results["splits"][split][head]["acc"])
    for kind in ("feedforward", "introspective", "control"):
        assert f"{kind}/train/loss" in logged and f"{kind}/val/acc" in logged
    offline = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0


def test_overwriting_run_that_fails_leaves_no_stale_results(tmp_path: Path, monkeypatch) -> None:
    import introspect.stages.evaluate as report

    cfg = _cfg(tmp_path, "eval.corruptions=[]", "stage2.enabled=false")
    run(cfg)
    run_dir = Path(cfg.run.dir)
    assert (run_dir / "results.json").is_file()
    monkeypatch.setattr(report, "reliability_grid", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run(_cfg(tmp_path, "eval.corruptions=[]", "stage2.enabled=false", "run.overwrite=true"))
    assert not (run_dir / "results.json").exists()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"


@pytest.mark.slow
def test_channels_last_frozen_network_matches_the_default_format(
    finished, tmp_path: Path, monkeypatch
) -> None:
    cfg0, run_dir0, _ = finished
    from introspect.stages.stage1 import stage1_checkpoint

    checkpoint = stage1_checkpoint(train_settings(cfg0).stage1.backbone, run_dir0)
    formats: dict[bool, bool] = {}
    original = stage2_mod.stage2

    def spy(settings, dm, backbone, run_dir, trainer, device):
        conv = next(m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d))
        formats[run_dir.name == "run-True"] = (
            conv.weight.is_contiguous(memory_format=torch.channels_last)
            and not conv.weight.is_contiguous()
        )
        return original(settings, dm, backbone, run_dir, trainer, device)

    monkeypatch.setattr(pipeline, "stage2", spy)
    results = {}
    for flag in (False, True):
        cfg = load_config(
            [
                *TINY,
                f"backbone.checkpoint={checkpoint}",
                f"trainer.channels_last={str(flag).lower()}",
                f"run.dir={tmp_path / f'run-{flag}'}",
                f"stage2.cache_dir={tmp_path / f'cache-{flag}'}",
            ]
        )
        results[flag] = run(cfg)["splits"]
    assert formats == {False: False, True: True}
    assert set(results[False]) == set(results[True])
    for split, heads in results[False].items():
        for head, metrics in heads.items():
            if head == "num_samples":
                assert results[True][split][head] == metrics
                continue
            for name, value in metrics.items():
                assert results[True][split][head][name] == pytest.approx(value, abs=1e-4), (
                    split,
                    head,
                    name,
                )
