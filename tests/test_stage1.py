"""Stage 1: PGD against its definition, the LightningModule's training loop, train.py end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from introspect.attacks import pgd
from introspect.config import load_config
from introspect.jobs.settings import train_settings
from introspect.jobs.train import run
from introspect.models import FeedForwardClassifier
from introspect.stages.stage1 import build_backbone, build_data, stage1

REPO = Path(__file__).resolve().parents[1]


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 3))


def test_pgd_one_step_is_fgsm_and_stays_in_the_ball() -> None:
    net = _tiny_net().double()
    x = torch.rand(5, 3, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1])
    eps = 0.05
    adv = pgd(net, x, y, eps=eps, alpha=eps, steps=1, random_start=False)
    assert all(p.grad is None and p.requires_grad for p in net.parameters())
    # reference: one signed-gradient step of the summed-mean CE loss, clipped to the image range
    xr = x.clone().requires_grad_(True)
    F.cross_entropy(net(xr), y).backward()
    expected = (x + eps * xr.grad.sign()).clamp(0, 1)
    torch.testing.assert_close(adv, expected)


def test_pgd_increases_loss_and_respects_epsilon() -> None:
    net = _tiny_net()
    x = torch.rand(64, 3, 4, 4)
    y = torch.randint(0, 3, (64,))
    eps = 8 / 255
    g = torch.Generator().manual_seed(0)
    adv = pgd(net, x, y, eps=eps, alpha=2 / 255, steps=10, generator=g)
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(net(adv), y) > F.cross_entropy(net(x), y)


def test_fast_dev_run_trains_and_tests(tmp_path: Path) -> None:
    cfg = load_config(
        [
            "data=synthetic",
            "data.num_samples=96",
            "data.image_size=8",
            "trainer=debug",
            f"run.dir={tmp_path / 'run'}",
            "stage1.adversarial.enabled=true",
            "stage1.adversarial.steps=2",
        ]
    )
    dm = build_data(train_settings(cfg).stage1)
    backbone = build_backbone(train_settings(cfg).stage1, dm.num_classes, dm.image_shape)
    before = [p.detach().clone() for p in backbone.parameters()]
    model = stage1(train_settings(cfg).stage1, dm, backbone, tmp_path, loggers=[])
    assert isinstance(model, FeedForwardClassifier)
    changed = any(not torch.equal(a, b) for a, b in zip(before, backbone.parameters(), strict=True))
    assert changed, "one training step should have updated the backbone"


@pytest.mark.slow
def test_stage1_learns_synthetic_data_and_keeps_checkpoints(tmp_path: Path) -> None:
    cfg = load_config(
        [
            "data=synthetic",
            "data.num_samples=256",
            "data.image_size=8",
            "stage1.epochs=4",
            "stage2.enabled=false",
            "trainer.enable_progress_bar=false",
            f"run.dir={tmp_path / 'run'}",
        ]
    )
    results = run(cfg)
    run_dir = Path(cfg.run.dir)
    clean = results["splits"]["clean"]
    assert clean["feedforward"]["acc"] > 0.5  # 10 classes: chance is 0.1
    assert "introspective" not in clean
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "stage1-best.ckpt").is_file()
    assert (run_dir / "checkpoints" / "stage1-last.ckpt").is_file()
    assert (run_dir / "logs" / "metrics.csv").is_file()


@pytest.mark.slow
def test_train_py_reports_config_errors_without_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "data.batchsize=3"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "batch_size" in proc.stderr and "Traceback" not in proc.stderr
