"""``evaluate.py scores``: OOD and trust results of a tiny finished run against references."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score, roc_curve
from torch.utils.data import TensorDataset

import evaluate
from introspect.backbones.head import resolve_head
from introspect.config import load_config, load_run_config
from introspect.config.schema import ScoresConfig
from introspect.data.ood import UniformNoise
from introspect.data.samplers import seeded_subset
from introspect.jobs import scores as scores_mod
from introspect.jobs.scores import ScoresSettings, score_run
from introspect.jobs.settings import train_settings
from introspect.jobs.train import run
from introspect.runs.csvlog import read_long_csv
from introspect.scores import energy, msp
from introspect.scores.model_based import logits_and_penultimate
from introspect.stages.heads import load_heads
from introspect.stages.stage1 import build_backbone, build_data

TINY = [
    "data=synthetic",
    "data.num_samples=160",
    "data.image_size=8",
    "stage1.epochs=2",
    "stage2.head.epochs=2",
    "stage2.head.hidden=[32,16]",
    "stage2.control=false",
    "eval.corruptions=[gaussian_noise,contrast]",
    "eval.severities=[5]",
    "trainer.enable_progress_bar=false",
]
FEED_FORWARD = [
    "msp", "max_logit", "entropy", "margin", "energy", "odin", "gradnorm", "gradtrust",
    "gradtrust_paper", "nll", "mcd_bald", "mcd_expected_entropy", "mahalanobis",
]  # fmt: skip
SCORES = [*FEED_FORWARD, "int_msp", "int_odin"]


def _npz(path: Path, n: int, size: int, channels: int, classes: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    shape = (n, size, size, channels) if channels == 3 else (n, size, size)
    np.savez(path, x=rng.integers(0, 256, shape, dtype=np.uint8), y=np.arange(n) % classes)
    return path


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory):
    """A finished tiny run (with an ``eval.extra`` split), scored once by the CLI with two OOD
    sets: ``same`` (RGB at the run's size) and ``gray`` (3 classes, grayscale, resized)."""
    tmp = tmp_path_factory.mktemp("scores")
    extra = _npz(tmp / "extra.npz", 24, 8, 3, 10, 1)
    cfg = load_config(
        [
            *TINY,
            f"run.dir={tmp / 'run'}",
            f"stage2.cache_dir={tmp / 'cache'}",
            "eval.extra.other.source=npz",
            f"eval.extra.other.path={extra}",
            "eval.extra.other.split=all",
        ]
    )
    run(cfg)
    run_dir = Path(cfg.run.dir)
    before = json.loads((run_dir / "results.json").read_text())
    train_log = (run_dir / "logs" / "metrics.csv").read_bytes()
    same = _npz(tmp / "same.npz", 30, 8, 3, 10, 2)
    gray = _npz(tmp / "gray.npz", 40, 12, 1, 3, 3)
    args = [f"run={run_dir}", "tag=main", "scores.purview=false", "eval.mc_dropout.samples=3"]
    for name, path in (("same", same), ("gray", gray)):
        args += [f"scores.ood.{name}.source=npz", f"scores.ood.{name}.path={path}"]
        args += [f"scores.ood.{name}.split=all"]
    rc = evaluate.main(["scores", *args])
    out = run_dir / "evaluations" / "scores-main"
    after = json.loads((out / "results.json").read_text())
    return {"rc": rc, "run_dir": run_dir, "out": out, "before": before, "after": after,
            "same": same, "train_log": train_log, "tmp": tmp}  # fmt: skip


def test_scores_writes_ood_and_trust_beside_the_run_record(scored) -> None:
    assert scored["rc"] == 0
    before, after, run_dir = scored["before"], scored["after"], scored["run_dir"]
    # The run's own record is untouched; the scores are a record of their own.
    assert json.loads((run_dir / "results.json").read_text()) == before
    assert set(after) == {"run", "ood", "trust", "detection", "integrity"}
    assert after["detection"] is None
    assert after["run"]["evaluation_of"] == str(run_dir)
    assert after["run"]["provenance"]["versions"]["torch"] == torch.__version__
    ood, trust = after["ood"], after["trust"]
    assert ood["positive_class"] == "in-distribution"
    assert ood["num_samples"] == {
        "in_distribution": 32,
        "ood_sets": {"same": 30, "gray": 40, "noise": 32},
    }
    assert list(ood["scores"]) == SCORES
    for by_set in ood["scores"].values():
        assert list(by_set) == ["same", "gray", "noise"]
        for metrics in by_set.values():
            assert set(metrics) == {
                "auroc",
                "fpr95_ood",
                "fpr95_id",
                "aupr_in",
                "aupr_out",
                "detection_error",
            }
            assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert trust["num_samples"] == {"clean": 32, "other": 24, "corrupted": 64}
    assert list(trust["scores"]) == SCORES
    for by_split in trust["scores"].values():
        assert list(by_split) == ["clean", "other", "corrupted"]
        assert all(set(m) == {"auac", "aufc"} for m in by_split.values())
    assert ood["settings"]["max_samples"] == 2000 and ood["settings"]["purview"] is False
    markdown = (scored["out"] / "scores.md").read_text()
    assert "| int_odin |" in markdown and "same AUROC" in markdown and "corrupted AUAC" in markdown
    logged = {name for _, name, _ in read_long_csv(scored["out"] / "logs" / "metrics.csv")}
    assert "scores/ood/msp/gray/auroc" in logged and "scores/trust/int_msp/other/aufc" in logged
    # The run's own training log is kept.
    assert (run_dir / "logs" / "metrics.csv").read_bytes() == scored["train_log"]


def _reload(run_dir: Path):
    cfg = load_run_config(run_dir)
    cfg.backbone.checkpoint = str(run_dir / "checkpoints" / "stage1-best.ckpt")
    dm = build_data(train_settings(cfg).stage1)
    backbone = build_backbone(train_settings(cfg).stage1, dm.num_classes, dm.image_shape).eval()
    heads = load_heads(
        backbone,
        run_dir,
        dm.num_classes,
        head=train_settings(cfg).stage2.head,
        features=train_settings(cfg).stage2.features,
    )
    intro = heads["introspective"]
    test = dm.split("test")
    x = torch.stack([test[i][0] for i in range(len(test))])
    y = torch.as_tensor([int(test[i][1]) for i in range(len(test))])
    return backbone, intro, x, y


@pytest.mark.parametrize("name", ["msp", "energy"])
def test_ood_metrics_match_sklearn_on_directly_computed_scores(scored, name: str) -> None:
    backbone, _, x_in, _ = _reload(scored["run_dir"])
    x_out = torch.from_numpy(np.load(scored["same"])["x"]).permute(0, 3, 1, 2).float() / 255
    score = {"msp": msp, "energy": energy}[name]
    with torch.no_grad():
        s = torch.cat([score(backbone(x_in)), score(backbone(x_out))]).numpy()
    y = np.r_[np.ones(len(x_in)), np.zeros(len(x_out))]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    got = scored["after"]["ood"]["scores"][name]["same"]
    assert got["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert got["fpr95_ood"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-9)


def _brute_auac(s: np.ndarray, correct: np.ndarray) -> float:
    grid = np.arange(100.0)
    acc = [correct[s >= np.percentile(s, p)].mean() for p in grid]
    return float(np.trapezoid(acc, grid) / 99.0)


def test_auac_matches_brute_force_with_each_heads_predictions(scored) -> None:
    backbone, intro, x, y = _reload(scored["run_dir"])
    with torch.no_grad():
        logits, int_logits = backbone(x), intro(x)
    trust = scored["after"]["trust"]["scores"]
    ff = _brute_auac(msp(logits).numpy(), (logits.argmax(1) == y).numpy())
    assert trust["msp"]["clean"]["auac"] == pytest.approx(ff, abs=1e-9)
    # int_* scores rank the introspective head's own predictions.
    intro_auac = _brute_auac(msp(int_logits).numpy(), (int_logits.argmax(1) == y).numpy())
    assert trust["int_msp"]["clean"]["auac"] == pytest.approx(intro_auac, abs=1e-6)


def test_nll_and_mc_dropout_trust_scores(scored) -> None:
    from introspect.data.seeding import derive_seed
    from introspect.uncertainty import MCDropout

    backbone, _, x, y = _reload(scored["run_dir"])
    with torch.no_grad():
        logits = backbone(x)
    trust = scored["after"]["trust"]["scores"]
    correct = (logits.argmax(1) == y).numpy()
    # -NLL of the prediction is log(MSP): the same ranking, the same AUAC.
    assert trust["nll"]["clean"]["auac"] == pytest.approx(trust["msp"]["clean"]["auac"])
    # MC-dropout scores of the in-distribution batch (one batch, key of its first batch) rank
    # the feed-forward predictions.
    mcd = MCDropout(3, 0.1, seed=0)
    mc = mcd.scores(mcd.sample_logits(backbone, x, key=derive_seed("in_distribution", 0)))
    for name in ("mcd_bald", "mcd_expected_entropy"):
        want = _brute_auac(mc[name].numpy(), correct)
        assert trust[name]["clean"]["auac"] == pytest.approx(want, abs=1e-6)
    assert "3 samples, p=0.1" in scored["after"]["trust"]["settings"]["mc_dropout"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["scores.ood.bad.source=npz", "scores.ood.bad.path=/nonexistent.npz"], "scores.ood.bad"),
        (["scores.nope=1"], "scores.nope"),
        (["scores.max_samples=0"], "scores.max_samples"),
        (["scores.purview_detector=true", "scores.purview=false"], "scores.purview=true"),
        (["scores.ood.x.path=a.npz", "scores.ood.x.split=every"], "scores.ood.x.split"),
        (["scores.posthoc=[knn,nope]"], "scores.posthoc: unknown detector(s) ['nope']"),
    ],
)
def test_user_errors_exit_2_and_leave_results_untouched(scored, capsys, args, message) -> None:
    path = scored["run_dir"] / "results.json"
    data = path.read_bytes()
    assert evaluate.main(["scores", f"run={scored['run_dir']}", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert path.read_bytes() == data
    assert [p.name for p in (scored["run_dir"] / "evaluations").iterdir()] == ["scores-main"]


def test_a_failure_while_scoring_leaves_results_untouched(scored, monkeypatch) -> None:
    def broken(*_args, **_kwargs):
        raise RuntimeError("scoring failed")

    monkeypatch.setattr(scores_mod, "score_batch", broken)
    path = scored["run_dir"] / "results.json"
    data = path.read_bytes()
    cfg = load_run_config(scored["run_dir"], ["scores.purview=false"])
    out = scored["run_dir"] / "evaluations" / "failing"
    with pytest.raises(RuntimeError, match="scoring failed"):
        score_run(ScoresSettings.from_config(cfg), scored["run_dir"], out)
    assert path.read_bytes() == data
    assert not (out / "results.json").exists()


def test_an_old_run_config_without_scores_loads(scored, tmp_path: Path) -> None:
    saved = yaml.safe_load((scored["run_dir"] / "config.yaml").read_text())
    assert "scores" in saved
    del saved["scores"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    cfg = load_run_config(tmp_path, ["scores.noise=false"])
    expected = OmegaConf.to_container(OmegaConf.structured(ScoresConfig))
    assert OmegaConf.to_container(cfg.scores) == {**expected, "noise": False}


@pytest.fixture
def one_thread():
    """The detector is a tiny MLP trained for 300 full-batch steps: intra-op threads only add
    overhead, which grows sharply when other jobs load the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_purview_and_the_supervised_detector(scored, tmp_path: Path, one_thread) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(scored["run_dir"], run_dir)
    args = ["scores.max_samples=12", "scores.purview_detector=true", "scores.trust=false"]
    folder = run_dir / "evaluations" / "detector"
    out = score_run(ScoresSettings.from_config(load_run_config(run_dir, args)), run_dir, folder)
    on_disk = json.loads((folder / "results.json").read_text())
    assert on_disk["ood"] == json.loads(json.dumps(out["ood"])) and out["trust"] is None
    assert on_disk["trust"] is None
    table = on_disk["ood"]["scores"]
    assert {"purview", "purview_initial", "purview_detector_supervised"} <= set(table)
    assert list(table["purview_detector_supervised"]) == ["noise"]
    assert on_disk["ood"]["num_samples"]["ood_sets"] == {"noise": 12}
    assert on_disk["ood"]["purview_detector"]["held_out_samples"] == {
        "in_distribution": 6,
        "noise": 6,
    }
    assert "supervised" in (folder / "scores.md").read_text()


def test_posthoc_detectors_in_the_scores_task(scored, tmp_path: Path) -> None:
    """``scores.posthoc`` detectors (through ``create_detector``) give pytorch-ood's AUROC."""
    detector = pytest.importorskip("pytorch_ood.detector")
    run_dir = tmp_path / "run"
    shutil.copytree(scored["run_dir"], run_dir)
    args = [
        "scores.max_samples=12",
        "scores.trust=false",
        "scores.posthoc=[fdbd,gen_introspective]",
    ]
    table = score_run(
        ScoresSettings.from_config(load_run_config(run_dir, args)), run_dir, tmp_path / "out"
    )["ood"]["scores"]
    backbone, intro, x, _ = _reload(run_dir)
    keep = seeded_subset(TensorDataset(x), 12, 0, "in_distribution").indices  # type: ignore[attr-defined]
    noise = UniformNoise(12, tuple(x.shape[1:]), 0)
    images = torch.cat([x[keep], torch.stack([noise[i][0] for i in range(12)])])
    train = build_data(load_run_config(run_dir)).split("train")
    x_train = torch.stack([train[i][0] for i in range(len(train))])
    with torch.no_grad():
        linear = resolve_head(backbone, getattr(backbone, "head", None), x[:1])
        fdbd = detector.fDBD(None, linear)
        fdbd.to("cpu")
        fdbd.fit_features(_penultimate(backbone, x_train))
        theirs = {
            "fdbd": -fdbd.predict_features(_penultimate(backbone, images)),
            "int_gen": -detector.GEN(None).predict_logits(intro(images)),
        }
    truth = [1] * 12 + [0] * 12
    for name, s in theirs.items():
        assert table[name]["noise"]["auroc"] == pytest.approx(roc_auc_score(truth, s), abs=1e-9)


def _penultimate(backbone: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return logits_and_penultimate(backbone, x)[1].flatten(1)


def test_noise_images_and_subsets_are_seeded() -> None:
    noise = UniformNoise(5, (3, 4, 4), seed=1)
    assert len(noise) == 5 and noise[2][0].shape == (3, 4, 4)
    assert torch.equal(noise[2][0], UniformNoise(5, (3, 4, 4), seed=1)[2][0])
    assert not torch.equal(noise[2][0], UniformNoise(5, (3, 4, 4), seed=2)[2][0])
    assert 0.0 <= float(noise[0][0].min()) and float(noise[0][0].max()) < 1.0
    with pytest.raises(IndexError):
        noise[5]
    data = list(range(50))
    a = seeded_subset(data, 10, 0, "x")  # type: ignore[arg-type]
    assert len(a) == 10 and list(a.indices) == sorted(a.indices)  # type: ignore[attr-defined]
    assert list(a.indices) == list(seeded_subset(data, 10, 0, "x").indices)  # type: ignore
    assert list(a.indices) != list(seeded_subset(data, 10, 1, "x").indices)  # type: ignore
    assert seeded_subset(data, None, 0, "x") is data  # type: ignore[arg-type]
