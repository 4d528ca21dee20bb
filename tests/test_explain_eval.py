"""Deletion/insertion curves and AUCs, VOICE over a dataset, and the explain-eval command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from introspect.cli.explain import explain_eval_main
from introspect.config import load_config, save_config
from introspect.explain import (
    ExplanationError,
    curve_auc,
    deletion_insertion,
    evaluate_faithfulness,
    evaluate_voice,
    perturbation_curves,
    random_map,
    voice,
)
from introspect.explain.core import baseline_images, blur
from introspect.jobs.settings import train_settings
from introspect.stages.stage1 import build_backbone, build_data
from tests.explain_nets import HalfMeanModel, PoolNet

SIZE = (8, 12)


pytestmark = pytest.mark.usefixtures("single_thread")


def left_half_map(model, images, layer=None, target=None, normalize=True):
    """The oracle of HalfMeanModel's class 0: the left half, brightest first."""
    maps = images.mean(1).clone()
    maps[..., SIZE[1] // 2 :] -= 10
    return maps


def test_curves_match_a_brute_force_loop() -> None:
    torch.manual_seed(0)
    net = PoolNet().eval()
    x = torch.rand(3, 3, *SIZE)
    maps = torch.rand(3, *SIZE)  # distinct values: no ties
    steps = 6
    with torch.no_grad():
        target = net(x).argmax(1)
        for mode, baseline in (("deletion", 0.25), ("insertion", "blur")):
            fill = baseline_images(x, baseline)
            got = perturbation_curves(
                net, x, maps, mode=mode, steps=steps, baseline=baseline, batch_size=4
            )
            for b in range(3):
                order = maps[b].flatten().argsort(descending=True)
                for k in range(steps + 1):
                    changed = torch.zeros(SIZE[0] * SIZE[1], dtype=torch.bool)
                    changed[order[: round(k * SIZE[0] * SIZE[1] / steps)]] = True
                    changed = changed.view(SIZE)
                    if mode == "deletion":
                        image = torch.where(changed, fill[b], x[b])
                    else:
                        image = torch.where(changed, x[b], fill[b])
                    prob = net(image[None]).softmax(1)[0, target[b]]
                    assert got[b, k].item() == pytest.approx(prob.item(), abs=1e-6)
    # deletion starts at the clean probability and ends at the baseline's; insertion reversed
    both = deletion_insertion(net, x, maps, steps=steps)
    torch.testing.assert_close(both.deletion[:, 0], both.insertion[:, -1])
    torch.testing.assert_close(both.deletion_auc, curve_auc(both.deletion))


def test_auc_closed_forms_on_a_model_of_the_left_half() -> None:
    model = HalfMeanModel()
    x = torch.ones(2, 3, *SIZE)
    oracle = left_half_map(model, x)
    # Deleting the left half linearly takes p_0 from 1 to 0 over the first half of the
    # pixels, then it stays 0: area 1/4. Inserting it from black: p_0 reaches 1 halfway, 3/4.
    result = deletion_insertion(
        model, x, oracle, target=0, steps=24, deletion_baseline=0.0, insertion_baseline=0.0
    )
    torch.testing.assert_close(result.deletion_auc, torch.full((2,), 0.25), atol=1e-5, rtol=0)
    torch.testing.assert_close(result.insertion_auc, torch.full((2,), 0.75), atol=1e-5, rtol=0)
    # A map that ranks the irrelevant half first: 3/4 and 1/4.
    result = deletion_insertion(
        model, x, -oracle, target=0, steps=24, deletion_baseline=0.0, insertion_baseline=0.0
    )
    torch.testing.assert_close(result.deletion_auc, torch.full((2,), 0.75), atol=1e-5, rtol=0)
    # A constant map is ordered at random: about 1/2 either way.
    flat = deletion_insertion(
        model, x, torch.zeros(2, *SIZE), target=0, deletion_baseline=0.0, insertion_baseline=0.0
    )
    assert (flat.deletion_auc - 0.5).abs().max() < 0.1


def test_curve_auc_is_the_trapezoid_rule() -> None:
    curves = torch.rand(4, 9, dtype=torch.float64)
    expected = np.trapezoid(curves.numpy(), dx=1 / 8, axis=1)
    np.testing.assert_allclose(curve_auc(curves).numpy(), expected, rtol=1e-12)
    with pytest.raises(ExplanationError, match="K >= 2"):
        curve_auc(torch.rand(3, 1))


def test_blur_baseline_is_a_normalized_gaussian() -> None:
    x = torch.zeros(1, 1, 21, 21)
    x[0, 0, 10, 10] = 1
    kernel = blur(x)[0, 0]
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-6)
    offsets = torch.arange(-5, 6, dtype=torch.float32)
    g = torch.exp(-0.5 * (offsets / 5.0) ** 2)
    expected = torch.outer(g, g) / g.sum() ** 2
    torch.testing.assert_close(kernel[5:16, 5:16], expected, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(blur(torch.full((2, 3, 6, 6), 0.3)), torch.full((2, 3, 6, 6), 0.3))
    with pytest.raises(ExplanationError, match="baseline must be"):
        baseline_images(x, "gray")


def test_evaluate_faithfulness_averages_per_image_aucs() -> None:
    model = HalfMeanModel()
    torch.manual_seed(0)
    x = 0.5 + 0.5 * torch.rand(5, 3, *SIZE)
    batches = [x[:3], (x[3:], torch.zeros(2))]
    table = evaluate_faithfulness(
        model,
        batches,
        {"oracle": left_half_map, "random": random_map},
        steps=12,
        options={"random": {"seed": 3}},
        deletion_baseline=0.0,
        insertion_baseline=0.0,
    )
    assert list(table) == ["oracle", "random"]
    for name, method in (("oracle", left_half_map), ("random", random_map)):
        row = table[name]
        kwargs = {"seed": 3} if name == "random" else {}
        aucs = [
            deletion_insertion(
                model,
                b,
                method(model, b, normalize=False, **kwargs),
                steps=12,
                deletion_baseline=0.0,
                insertion_baseline=0.0,
            )
            for b in (x[:3], x[3:])
        ]
        deletion = torch.cat([a.deletion_auc for a in aucs]).mean().item()
        insertion = torch.cat([a.insertion_auc for a in aucs]).mean().item()
        assert row["deletion_auc"] == pytest.approx(deletion, abs=1e-6)
        assert row["insertion_auc"] == pytest.approx(insertion, abs=1e-6)
        assert row["images"] == 5 and row["seconds_per_image"] > 0
    assert table["oracle"]["deletion_auc"] < table["random"]["deletion_auc"] - 0.1
    assert table["oracle"]["insertion_auc"] > table["random"]["insertion_auc"] + 0.1
    with pytest.raises(ExplanationError, match="not evaluated"):
        evaluate_faithfulness(model, batches, {"oracle": left_half_map}, options={"rise": {}})


def test_evaluate_voice_groups_correct_and_incorrect_predictions() -> None:
    torch.manual_seed(0)
    net = PoolNet().eval()
    x = torch.rand(6, 3, *SIZE)
    with torch.no_grad():
        pred = net(x).argmax(1)
    labels = pred.clone()
    labels[[1, 4]] = (pred[[1, 4]] + 1) % 4  # two wrong predictions
    evaluation = evaluate_voice(net, [(x[:4], labels[:4]), (x[4:], labels[4:])], "conv2")
    direct = voice(net, x, "conv2")
    torch.testing.assert_close(evaluation.iou, direct.iou)
    torch.testing.assert_close(evaluation.snr, direct.snr)
    assert evaluation.correct.tolist() == [True, False, True, True, False, True]
    summary = evaluation.summary()
    wrong = torch.tensor([1, 4])
    right = torch.tensor([0, 2, 3, 5])
    assert summary["incorrect"]["images"] == 2 and summary["correct"]["images"] == 4
    assert summary["incorrect"]["mean_iou"] == pytest.approx(direct.iou[wrong].mean().item())
    assert summary["correct"]["mean_snr"] == pytest.approx(direct.snr[right].mean().item())
    assert summary["all"]["mean_iou"] == pytest.approx(direct.iou.mean().item())


def test_voice_threshold_applies_to_the_normalized_uncertainty() -> None:
    torch.manual_seed(0)
    net = PoolNet().eval()
    x = torch.rand(4, 3, *SIZE)
    result = voice(net, x, "conv2", threshold=0.3)
    # A variance of values in [0, 1] never exceeds 1/4: on the raw map a 0.3 threshold would
    # select nothing and every IoU would be 0. On the normalized map it is a usable level.
    assert result.uncertainty.max() < 0.25 + 1e-6
    assert (result.iou > 0).any()
    with pytest.raises(ExplanationError, match="threshold"):
        voice(net, x, threshold=1.0)


# ---- the command -----------------------------------------------------------------------


def make_run(tmp_path: Path) -> Path:
    """A finished run on synthetic 8x8 images (config and stage-1 checkpoint only)."""
    run_dir = tmp_path / "run"
    cfg = load_config(
        ["data=synthetic", "data.num_samples=40", "data.image_size=8", f"run.dir={run_dir}"]
    )
    dm = build_data(train_settings(cfg).stage1)
    backbone = build_backbone(train_settings(cfg).stage1, dm.num_classes, dm.image_shape)
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": backbone.state_dict()}, run_dir / "checkpoints" / "stage1-last.ckpt")
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


def _call(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = explain_eval_main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_eval_writes_a_record_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = make_run(tmp_path)
    argv = [
        f"run={run_dir}",
        "methods=[gradcam,rise,random]",
        "n=5",
        "steps=8",
        "batch_size=3",
        "method.rise.masks=20",
        "sanity_n=3",
    ]
    code, out, err = _call(argv, capsys)
    assert code == 0, err
    folder = run_dir / "evaluations" / "explain"
    results = json.loads((folder / "results.json").read_text())
    table = results["faithfulness"]
    assert list(table) == ["gradcam", "rise", "random"]
    assert all(row["images"] == 5 and 0 <= row["deletion_auc"] <= 1 for row in table.values())
    assert results["settings"]["method_options"] == {"rise": {"masks": 20}}
    summary = results["voice"]["summary"]
    assert summary["correct"]["images"] + summary["incorrect"]["images"] == 5
    assert len(results["voice"]["iou"]) == 5
    assert (folder / "voice.png").is_file() and "| gradcam |" in (folder / "explain.md").read_text()
    assert "| gradcam |" in out and str(folder / "results.json") in out
    # the sanity checks: a model-independent map keeps ρ = 1 however many layers are random
    sanity = results["sanity"]
    assert sanity["images"] == 3 and list(sanity["methods"]) == ["gradcam", "rise", "random"]
    assert (sanity["samples"], sanity["radius"], sanity["points"]) == (4, 0.02, 4)
    steps = sanity["methods"]["random"]["randomization"]
    assert len(steps) >= 2 and all(step["spearman"] == pytest.approx(1.0) for step in steps)
    assert steps[-1]["randomized"] > steps[0]["randomized"] == 1
    assert all(row["max_sensitivity"] >= 0 for row in sanity["methods"].values())
    assert "## Sanity checks" in out and "| rise |" in out.split("## Sanity checks")[1]
    # the same evaluation again is refused: a record is never replaced
    code, out, err = _call(argv, capsys)
    assert code == 2 and "already holds results" in err and err.count("\n") == 1
    # a corruption cell goes to its own folder, without VOICE when asked
    cell = [f"run={run_dir}", "methods=gradcam", "n=4", "cell=gaussian_noise/3", "voice=false"]
    cell.append("sanity=false")
    code, out, err = _call(cell, capsys)
    assert code == 0, err
    results = json.loads(
        (run_dir / "evaluations/explain-gaussian_noise-3/results.json").read_text()
    )
    assert results["settings"]["cell"] == "gaussian_noise/3" and results["voice"] is None
    assert results["sanity"] is None and "Sanity" not in out
    # the data differ: another AUC than on the clean images
    clean = json.loads((folder / "results.json").read_text())["faithfulness"]["gradcam"]
    assert results["faithfulness"]["gradcam"]["deletion_auc"] != clean["deletion_auc"]


def test_explain_eval_errors_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = make_run(tmp_path)
    from introspect.cli import explain as cli
    from introspect.explain import MAP_METHODS
    from introspect.explain.methods import REFERENCES

    assert cli.METHOD_NAMES == tuple(MAP_METHODS) and cli.REFERENCE_NAMES == tuple(REFERENCES)
    for argv, message in (
        ([f"run={run_dir}", "methods=[gradcam,nope]"], "unknown method(s) nope"),
        ([f"run={run_dir}", "cell=fog"], "cell must be"),
        ([f"run={run_dir}", "cell=fog/9"], "cell must be"),
        ([f"run={run_dir}", "threshold=2"], "threshold must be"),
        ([f"run={run_dir}", "voice=maybe"], "voice must be true or false"),
        ([f"run={run_dir}", "sanity=maybe"], "sanity must be true or false"),
        ([f"run={run_dir}", "sanity_n=0"], "sanity_n must be a positive integer"),
        ([f"run={run_dir}", "methods=[]", "voice=false"], "nothing to evaluate"),
        ([f"run={run_dir}", "methods=gradcam", "method.rise.masks=5"], "not evaluated"),
        ([f"run={run_dir}", "methods=rise", "method.rise.size=5"], "rise has no option size"),
        ([f"run={run_dir}", "methods=gradcam", "cell=blurry/2"], "unknown corruption"),
        ([f"run={run_dir}", "methods=gradcam", "layer=nope"], "no layer 'nope'"),
        ([f"run={run_dir}", "task=quality"], "is a quality run; explain-eval explains"),
        ([f"run={tmp_path / 'missing'}"], "does not exist"),
        (["n=3"], "run=runs/<name>"),
    ):
        code, out, err = _call(argv, capsys)
        assert code == 2, argv
        assert err.startswith("error: ") and message in err, (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err
    assert not (run_dir / "evaluations" / "explain" / "results.json").exists()
    assert _call([], capsys)[0] == 2 and _call(["--help"], capsys)[0] == 0


@pytest.mark.slow
def test_argument_errors_come_before_torch_is_imported(tmp_path: Path) -> None:
    import subprocess
    import sys

    run_dir = make_run(tmp_path)
    (run_dir / "evaluations" / "explain").mkdir(parents=True)
    (run_dir / "evaluations" / "explain" / "results.json").write_text("{}")
    calls = [
        ["explain-eval", f"run={run_dir}", "methods=[nope]"],
        ["explain-eval", f"run={run_dir}"],  # the record exists
        ["explain-eval", f"run={tmp_path / 'missing'}"],
        ["explain-network", f"run={run_dir}", "channels=x"],
        ["explain", f"run={run_dir}", "figure=nope"],
    ]
    code = (
        "import sys, evaluate; "
        f"codes = [evaluate.main(argv) for argv in {calls!r}]; "
        "print(codes, sorted({'torch', 'lightning'} & set(sys.modules)))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.stdout.strip() == "[2, 2, 2, 2, 2] []", proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 5 and all(line.startswith("error: ") for line in lines)
    assert "unknown method(s) nope" in lines[0] and "already holds results" in lines[1]
