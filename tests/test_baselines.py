"""The baseline heads of a run (tempered twins, MC dropout, a trained ensemble) end to end on
tiny data, the calibration-split rules and the configuration checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import introspect.stages.heads as stage2_mod
from introspect.config import ConfigError, load_config, load_run_config
from introspect.jobs import train as pipeline
from introspect.jobs.settings import train_settings
from introspect.jobs.train import run
from introspect.metrics import fit_temperature
from introspect.stages.baselines import calibration_skips
from introspect.stages.evaluation import HEADS, head_logits
from introspect.stages.stage1 import build_backbone, build_data
from tests.test_pipeline import _cfg as _pipeline_cfg


def _cfg(tmp_path: Path, *extra: str):
    """The pipeline tests' tiny run, evaluated on one corruption cell."""
    return _pipeline_cfg(tmp_path, "eval.corruptions=[contrast]", "eval.severities=[5]", *extra)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("baselines")
    cfg = _cfg(tmp, "eval.mc_dropout.samples=5", "eval.mc_dropout.p=0.2", "stage1.ensemble=2")
    results = run(cfg)
    return cfg, Path(cfg.run.dir), results


def _stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])


@pytest.mark.slow
def test_every_split_and_the_summary_hold_every_baseline_head(finished) -> None:
    _, run_dir, results = finished
    on_disk = json.loads((run_dir / "results.json").read_text())
    for name, entry in on_disk["splits"].items():
        assert [h for h in HEADS if h in entry] == list(HEADS), name
        for head in ("feedforward", "introspective", "control", "control_hp"):
            # A tempered twin keeps its head's predictions.
            assert entry[f"{head}_ts"]["acc"] == entry[head]["acc"]
    assert list(on_disk["summary"]) == list(HEADS)
    table = (run_dir / "table.md").read_text()
    assert "acc FF+TS" in table and "ece INT+TS" in table and "acc MCD" in table
    assert "temperature scaling on the val split" in table
    assert "introspective+TS vs control+TS" in table


@pytest.mark.slow
def test_temperatures_are_fitted_on_the_val_split(finished) -> None:
    cfg, run_dir, results = finished
    temps = results["run"]["temperatures"]
    assert set(temps) == {"feedforward", "introspective", "control", "control_hp"}
    assert results["run"]["calibration"]["skipped"] == {}
    dm = build_data(train_settings(cfg).stage1)
    x, y = _stack(dm.split("val"))
    assert results["run"]["calibration"]["num_samples"] == len(y)
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
    logits, _ = head_logits(backbone, heads, x)
    for head, t in temps.items():
        assert t == pytest.approx(fit_temperature(logits[head], y), rel=1e-6)
    # The clean split's tempered NLL is the NLL of logits / T (F.cross_entropy reference).
    xt, yt = _stack(dm.split("test"))
    test_logits, _ = head_logits(backbone, heads, xt)
    for head, t in temps.items():
        nll = torch.nn.functional.cross_entropy(test_logits[head] / t, yt).item()
        assert results["splits"]["clean"][f"{head}_ts"]["nll"] == pytest.approx(nll, rel=1e-4)


@pytest.mark.slow
def test_trained_ensemble_members_are_saved_and_reloaded(finished) -> None:
    cfg, run_dir, results = finished
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert {"stage1-best.ckpt", "stage1-member2-best.ckpt", "stage1-member2-last.ckpt"} <= set(
        ckpts
    )
    first = torch.load(run_dir / "checkpoints" / "stage1-best.ckpt", weights_only=True)
    second = torch.load(run_dir / "checkpoints" / "stage1-member2-best.ckpt", weights_only=True)
    key = next(k for k in first["state_dict"] if k.endswith("weight"))
    assert not torch.equal(first["state_dict"][key], second["state_dict"][key])
    assert len(results["run"]["ensemble"]["members"]) == 2
    # Re-evaluation reloads the member and the temperatures come out the same.
    again = pipeline.reevaluate(
        train_settings(load_run_config(run_dir)), run_dir, run_dir / "evaluations" / "again"
    )
    assert again["run"]["temperatures"] == pytest.approx(results["run"]["temperatures"])
    for head in ("ensemble", "feedforward_ts", "introspective_ts"):
        for metric in ("acc", "nll"):
            assert again["splits"]["clean"][head][metric] == pytest.approx(
                results["splits"]["clean"][head][metric], rel=1e-5
            )


@pytest.mark.slow
def test_heads_trained_on_the_calibration_split_are_not_tempered(tmp_path: Path) -> None:
    heads = ["introspective", "control"]
    cfg = _cfg(tmp_path, "stage2.splits=[train,val]")
    dm = build_data(train_settings(cfg).stage1)
    skipped = calibration_skips(train_settings(cfg).calibration(tmp_path), dm, heads)
    assert set(skipped) == set(heads)
    assert "trained on the val split" in skipped["introspective"]
    # No validation split: nothing can be tempered, and the reason names the key.
    cfg = _cfg(tmp_path, "data.val_fraction=0")
    skipped = calibration_skips(
        train_settings(cfg).calibration(tmp_path), build_data(train_settings(cfg).stage1), heads
    )
    assert set(skipped) == {"feedforward", *heads}
    assert "data.val_fraction=0" in skipped["feedforward"]
    # Calibrating on train: the feed-forward network trained here saw it, the heads too.
    cfg = _cfg(tmp_path, "eval.calibration_split=train")
    assert set(
        calibration_skips(
            train_settings(cfg).calibration(tmp_path), build_data(train_settings(cfg).stage1), heads
        )
    ) == {
        "feedforward",
        *heads,
    }
    cfg = _cfg(tmp_path, "eval.calibration_split=none")
    assert calibration_skips(
        train_settings(cfg).calibration(tmp_path), build_data(train_settings(cfg).stage1), heads
    )["control"] == ("eval.calibration_split=none")
    assert (
        calibration_skips(
            train_settings(_cfg(tmp_path)).calibration(tmp_path),
            build_data(train_settings(cfg).stage1),
            heads,
        )
        == {}
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval.mc_dropout.samples=-1"], r"-1 for 'eval.mc_dropout.samples': must lie in \[0"),
        (["eval.mc_dropout.p=1.0"], r"1.0 for 'eval.mc_dropout.p': must lie in \[0, 1\)"),
        (["stage1.ensemble=0"], r"0 for 'stage1.ensemble': must lie in \[1, inf\)"),
        (["stage1.ensemble=3", "backbone.checkpoint=x.pt"], "backbone.checkpoint is set"),
        (["backbone.ensemble_checkpoints=[{checkpoint: a.pt}]"], "at least two"),
        (
            [
                "stage1.ensemble=2",
                "backbone.ensemble_checkpoints=[{checkpoint: a}, {checkpoint: b}]",
            ],
            "set one of them",
        ),
        (["backbone.ensemble_checkpoints=[{name: x}, {checkpoint: b}]"], r"\[0\].checkpoint"),
        (["eval.calibration_split=test"], "eval.calibration_split"),
        (["data.val_from=other"], "data.val_from"),
    ],
)
def test_bad_baseline_settings_fail_at_load(args: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(args)


@pytest.mark.slow
def test_ensemble_checkpoints_default_the_backbone_to_the_first_member() -> None:
    cfg = load_config(
        [
            "backbone=cifar_resnet20",
            "backbone.ensemble_checkpoints=[{checkpoint: a.th}, "
            "{name: cifar_resnet56, checkpoint: b.th}]",
        ]
    )
    assert cfg.backbone.ensemble_checkpoints[1].name == "cifar_resnet56"
    assert cfg.backbone.checkpoint == "a.th"  # resolved when the config is composed
    with pytest.raises(ConfigError, match="set backbone.name"):
        load_config(
            [
                "backbone.ensemble_checkpoints=[{name: cifar_resnet56, checkpoint: b.th}, "
                "{checkpoint: a.th}]"
            ]
        )
