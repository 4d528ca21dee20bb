"""``evaluate.py scores`` with attacks, corruption cells, an unlabeled OOD set and every
detector on a tiny finished run; the attack's success rate against a direct FGSM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import evaluate
from introspect.config import load_config, load_run_config
from introspect.jobs.settings import train_settings
from introspect.jobs.train import run
from introspect.stages.stage1 import build_backbone, build_data, stage1_checkpoint
from tests.test_scores_task import TINY

DETECTORS = {"lid", "mahalanobis_v", "mahalanobis_p", "mahalanobis_fe", "mahalanobis_p_fe"}


@pytest.fixture(scope="module")
def detected(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("detect")
    cfg = load_config([*TINY, f"run.dir={tmp / 'run'}", f"stage2.cache_dir={tmp / 'cache'}"])
    run(cfg)
    rng = np.random.default_rng(0)
    np.savez(tmp / "blank.npz", x=rng.integers(0, 256, (24, 10, 10, 3), dtype=np.uint8))
    one = rng.integers(0, 256, (20, 8, 8), dtype=np.uint8)
    np.savez(tmp / "one.npz", x=one, y=np.zeros(20, dtype=np.int64))
    args = [
        f"run={cfg.run.dir}",
        "tag=det",
        "scores.trust=false",
        "scores.noise=false",
        "scores.attacks=[fgsm,pgd]",
        "scores.attack.steps=3",
        "scores.attack.eps=0.5",
        "scores.corruption_detection=true",
        "eval.corruptions=[haze]",
        "eval.severities=[5]",
        "scores.detectors=true",
        "scores.detect.lid_k=5",
        "scores.detect.lid_reference=40",
        "scores.ood.blank.source=npz",
        f"scores.ood.blank.path={tmp / 'blank.npz'}",
        "scores.ood.one.source=npz",
        f"scores.ood.one.path={tmp / 'one.npz'}",
    ]
    rc = evaluate.main(["scores", *args])
    out = Path(cfg.run.dir) / "evaluations" / "scores-det"
    return {
        "rc": rc,
        "out": out,
        "args": args,
        "results": json.loads((out / "results.json").read_text()),
    }


def test_detection_sets_detectors_and_tables(detected) -> None:
    assert detected["rc"] == 0
    detection = detected["results"]["detection"]
    sizes = detection["sizes"]
    assert set(sizes) >= {"in_distribution", "haze/5", "blank", "one"}
    assert sizes["haze/5"]["fit"] + sizes["haze/5"]["held_out"] == 32
    assert sizes["blank"]["fit"] + sizes["blank"]["held_out"] == 24
    for name, stats in detection["attacks"].items():
        if stats["adversarial"] >= 2:
            assert sum(sizes[name].values()) == stats["adversarial"]
    table = detection["detectors"]
    assert DETECTORS <= set(table) and {"msp", "odin", "int_msp"} <= set(table)
    assert "purview_detector" in table  # scores.purview is on by default
    for by_set in table.values():
        for row in by_set.values():
            assert set(row) == {
                "auroc",
                "aupr_in",
                "aupr_out",
                "fpr95_ood",
                "fpr95_id",
                "detection_accuracy",
            }
            assert all(0 <= v <= 1 for v in row.values())
    markdown = (detected["out"] / "scores.md").read_text()
    for heading in ("Adversarial detection", "Corrupted-input detection", "FF) against intro"):
        assert heading in markdown
    # The unlabeled sets are whole OOD sets of the OOD table too.
    assert set(detected["results"]["ood"]["num_samples"]["ood_sets"]) == {"blank", "one"}


def test_fgsm_success_rate_matches_a_direct_attack(detected) -> None:
    cfg = load_run_config(Path(detected["args"][0].split("=", 1)[1]), detected["args"][2:])
    dm = build_data(train_settings(cfg).stage1)
    cfg.backbone.checkpoint = stage1_checkpoint(
        train_settings(cfg).stage1.backbone, Path(cfg.run.dir)
    )
    net = build_backbone(train_settings(cfg).stage1, dm.num_classes, dm.image_shape).eval()
    test = dm.split("test")
    x = torch.stack([test[i][0] for i in range(len(test))])
    y = torch.stack([test[i][1] for i in range(len(test))]).long()
    eps = cfg.scores.attack.eps
    xr = x.clone().requires_grad_(True)
    F.cross_entropy(net(xr), y, reduction="sum").backward()
    adv = (x + eps * xr.grad.sign()).clamp(0, 1)
    with torch.no_grad():
        right = net(x).argmax(1) == y
        fooled = right & (net(adv).argmax(1) != y)
    stats = detected["results"]["detection"]["attacks"]["adv_fgsm"]
    assert stats["correct_clean"] == int(right.sum())
    assert stats["adversarial"] == int(fooled.sum())
    assert stats["success_rate"] == pytest.approx(int(fooled.sum()) / int(right.sum()))
