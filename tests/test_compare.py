"""``evaluate.py compare``: one table across runs, seeds pooled into mean ± std, plots, W&B."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
from PIL import Image

import evaluate
from introspect.jobs.compare import CompareError, compare

HEADS = ("feedforward", "introspective", "control")


def _config(seed: int, backbone: str = "cifar_resnet20", augment: str = "augmix") -> dict:
    return {
        "run": {"name": f"r{seed}", "dir": f"/x/r{seed}", "seed": seed, "root": "runs"},
        "backbone": {"name": backbone, "checkpoint": "/ckpt/resnet20.th"},
        "stage2": {
            "enabled": True,
            "splits": ["train"],
            "augment": augment,
            "passes": 2,
            "include_clean": True,
            "cache_dir": f"/cache{seed}",
        },  # fmt: skip
        "logger": {"csv": True, "wandb": False, "wandb_mode": "offline", "project": "p"},
        "eval": {"corruptions": ["fog", "snow"], "severities": [1, 5]},
    }


def _metrics(base: float) -> dict:
    return {h: {"acc": base + 0.01 * i, "ece": 0.2 - base / 10 + 0.001 * i, "nll": 1.0}
            for i, h in enumerate(HEADS)}  # fmt: skip


def _write_run(root: Path, name: str, config: dict, offset: float) -> Path:
    """A finished run whose metrics are simple functions of ``offset``."""
    run = root / name
    run.mkdir(parents=True)
    cells = {f"{c}/{s}": {"num_samples": 10, **_metrics(0.5 + offset + 0.01 * s)}
             for c in ("fog", "snow") for s in (1, 5)}  # fmt: skip
    splits = {"clean": {"num_samples": 10, **_metrics(0.9 + offset)},
              "jpeg_q75": {"num_samples": 20, **_metrics(0.8 + offset)}, **cells}  # fmt: skip
    summary = {h: {m: statistics.mean(c[h][m] for c in cells.values()) for m in ("acc", "ece")}
               for h in HEADS}  # fmt: skip
    by_severity = {
        str(s): {h: {m: statistics.mean(cells[f"{c}/{s}"][h][m] for c in ("fog", "snow"))
                     for m in ("acc", "ece")} for h in HEADS}
        for s in (1, 5)
    }  # fmt: skip
    results = {"run": {"config": config}, "splits": splits, "summary": summary,
               "by_severity": by_severity}  # fmt: skip
    (run / "results.json").write_text(json.dumps(results))
    return run


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, list[Path]]:
    offsets = {0: 0.0, 1: 0.02, 2: 0.07}
    a = [_write_run(tmp_path, f"a{s}", _config(s), o) for s, o in offsets.items()]
    b = [_write_run(tmp_path, "b0", _config(0, "robust_resnet4b", "none"), 0.1)]
    return {"a": a, "b": b}


def _expected(paths: list[Path], scope: str, key) -> tuple[float, float]:
    values = []
    for p in paths:
        res = json.loads((p / "results.json").read_text())
        entry = res["summary"] if scope == "corrupted" else res["splits"][scope]
        values.append(key(entry))
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def test_seeds_are_pooled_into_mean_and_sample_std(runs, tmp_path: Path) -> None:
    report = compare([*runs["a"], *runs["b"]], tmp_path / "out", wandb=False)
    assert [len(g["runs"]) for g in report["groups"]] == [3, 1]
    table = report["groups"][0]["table"]
    for scope in ("clean", "corrupted", "jpeg_q75"):
        for short, head in (("FF", "feedforward"), ("INT", "introspective"), ("CTL", "control")):
            for m in ("acc", "ece"):
                got = table[f"{scope}/{short}/{m}"]
                want = _expected(runs["a"], scope, lambda e, h=head, m=m: e[h][m])
                assert got == pytest.approx(want, abs=1e-12)
        # differences are paired per seed
        got = table[f"{scope}/INT-CTL/ece"]
        want = _expected(
            runs["a"], scope, lambda e: e["introspective"]["ece"] - e["control"]["ece"]
        )
        assert got == pytest.approx(want, abs=1e-12)
    assert report["groups"][1]["table"]["clean/FF/acc"][1] == 0.0  # one seed: no spread


def test_files_markdown_csv_and_plots(runs, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = compare([*runs["a"], *runs["b"]], out, wandb=False)
    md = (out / "comparison.md").read_text()
    assert "cifar_resnet20 [resnet20.th] · train, augmix x2 + clean" in md
    assert "robust_resnet4b [resnet20.th] · train, plain" in md
    clean_ff = _expected(runs["a"], "clean", lambda e: e["feedforward"]["acc"])
    assert f"{100 * clean_ff[0]:.2f} ± {100 * clean_ff[1]:.2f}" in md
    assert md == report["markdown"]
    with (out / "comparison.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["n_seeds"] for r in rows] == ["3", "1"]
    assert rows[0]["seeds"] == "0 1 2"
    corr = _expected(runs["a"], "corrupted", lambda e: e["introspective"]["acc"])
    assert float(rows[0]["corrupted/INT/acc_mean"]) == pytest.approx(corr[0], abs=1e-6)
    assert float(rows[0]["corrupted/INT/acc_std"]) == pytest.approx(corr[1], abs=1e-6)
    for name in ("accuracy_vs_ece.png", "severity_curves.png"):
        with Image.open(out / name) as img:
            assert img.size[0] > 300 and img.size[1] > 300


def _assert_readable(fig, *, suptitle: tuple[str, ...]) -> None:
    """Titles name the runs and the split, every panel has axis labels, no legend covers one."""
    fig.canvas.draw()
    title = fig.get_suptitle()
    for part in suptitle:
        assert part in title
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.has_data()]
    assert panels
    for ax in panels:
        assert ax.get_xlabel() and ax.get_ylabel()
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    assert legends
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in panels:
            assert not box.overlaps(ax.get_window_extent(renderer)), "a legend covers a panel"


def test_figures_name_runs_and_split_in_percent(runs, tmp_path: Path) -> None:
    from introspect.jobs.compare import load_run
    from introspect.report.comparison import group_runs, group_table, scatter, severity_curves

    groups = group_runs([load_run(p) for p in [*runs["a"], *runs["b"]]])
    tables = [group_table(g) for g in groups]
    fig = scatter(tmp_path / "s.png", groups, tables)
    _assert_readable(fig, suptitle=("runs a0, a1, a2, b0", "test split"))
    assert all("(%)" in ax.get_xlabel() for ax in fig.axes if ax.has_data())
    fig = severity_curves(tmp_path / "c.png", groups)
    _assert_readable(fig, suptitle=("runs a0", "test split", "severity"))
    assert {ax.get_ylabel() for ax in fig.axes} == {"accuracy (%)", "ECE (%)"}


@pytest.mark.slow
def test_default_output_folder_is_beside_the_runs(runs, tmp_path: Path) -> None:
    report = compare(runs["a"], wandb=False)
    assert report["out_dir"] == tmp_path.resolve() / "comparison"
    assert (tmp_path / "comparison" / "comparison.csv").is_file()


def test_bad_inputs_are_clear_errors(runs, tmp_path: Path) -> None:
    with pytest.raises(CompareError, match="no results.json"):
        compare([tmp_path / "nowhere"])
    with pytest.raises(CompareError, match="listed twice"):
        compare([runs["a"][0], runs["a"][0]])
    dup = _write_run(tmp_path, "a0-again", _config(0), 0.3)
    with pytest.raises(CompareError, match=r"repeated seeds \[0, 1, 2, 0\]"):
        compare([*runs["a"], dup])
    other = _write_run(tmp_path, "a3", _config(3), 0.0)
    res = json.loads((other / "results.json").read_text())
    del res["splits"]["snow/5"]
    (other / "results.json").write_text(json.dumps(res))
    with pytest.raises(CompareError, match="different splits"):
        compare([*runs["a"], other])
    with pytest.raises(CompareError, match="at least one"):
        compare([])


def test_command_line(runs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    rc = evaluate.main(["compare", *map(str, runs["a"]), "--out", str(out), "--no-wandb"])
    assert rc == 0 and (out / "comparison.md").is_file()
    shown = capsys.readouterr().out  # the console form: aligned, within 100 columns
    assert "(backbone · stage-2 recipe)" in shown and "|" not in shown
    assert max(map(len, shown.splitlines())) <= 100
    assert evaluate.main(["compare", str(tmp_path / "missing")]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert evaluate.main(["compare", str(tmp_path / "empty")]) == 2
    assert "no results.json" in capsys.readouterr().err
    assert evaluate.main(["compare", "--bogus"]) == 2


def test_wandb_offline_logging(runs, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "wb"
    compare(runs["a"], out, wandb=True)
    offline = list((out / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    assert list(offline[0].glob("*.wandb"))  # the run's log file


def test_experiments_differing_beyond_the_recipe_are_named_by_their_keys(tmp_path: Path) -> None:
    plain = _write_run(tmp_path, "p", _config(0), 0.0)
    config = _config(0)
    config["stage2"]["head"] = {"dropout": 0.5}
    other = _write_run(tmp_path, "q", config, 0.01)
    report = compare([plain, other], tmp_path / "out", wandb=False)
    labels = [g["label"] for g in report["groups"]]
    base = "cifar_resnet20 [resnet20.th] · train, augmix x2 + clean"
    assert labels == [f"{base} (stage2.head.dropout=None)", f"{base} (stage2.head.dropout=0.5)"]


def test_baseline_heads_get_columns_paired_differences_and_markers(tmp_path: Path) -> None:
    from introspect.stages.evaluation import HEADS as ALL_HEADS

    paths = []
    for seed, offset in ((0, 0.0), (1, 0.03)):
        config = _config(seed)
        config["backbone"]["ensemble_checkpoints"] = [
            {"name": None, "checkpoint": "/ckpt/resnet20.th"},
            {"name": "cifar_resnet56", "checkpoint": "/ckpt/resnet56.th"},
        ]
        run = tmp_path / f"e{seed}"
        run.mkdir()
        metrics = {
            h: {"acc": 0.6 + offset + 0.01 * i, "ece": 0.2 - 0.02 * i + offset / 2}
            for i, h in enumerate(ALL_HEADS)
        }
        splits = {"clean": {"num_samples": 10, **metrics}, "fog/1": {"num_samples": 10, **metrics}}
        results = {"run": {"config": config}, "splits": splits, "summary": metrics}
        (run / "results.json").write_text(json.dumps(results))
        paths.append(run)
    report = compare(paths, tmp_path / "out", wandb=False)
    group = report["groups"][0]
    assert group["label"].endswith("· ensemble [resnet20.th, resnet56.th]")
    table = group["table"]
    for scope in ("clean", "corrupted"):
        for short in ("FF+TS", "INT+TS", "CTL+TS", "MCD", "ENS"):
            assert f"{scope}/{short}/acc" in table
        # INT+TS minus FF+TS, paired per seed: (index 3 - index 1) * 0.01 in accuracy
        assert table[f"{scope}/INT+TS-FF+TS/acc"][0] == pytest.approx(0.02)
        assert table[f"{scope}/INT+TS-CTL+TS/ece"][0] == pytest.approx(0.04)
    md = report["markdown"]
    header = next(line for line in md.splitlines() if line.startswith("| run"))
    for name in ("FF+TS acc", "ENS ECE", "MCD acc", "INT+TS−CTL+TS ECE", "INT−FF acc"):
        assert f"| {name} |" in header
    assert "+2.00 ± 0.00" in md  # a signed difference
    with Image.open(tmp_path / "out" / "accuracy_vs_ece.png") as img:
        assert img.size[0] > 300


def test_table1_layout_for_stage1_recipes(tmp_path: Path) -> None:
    recipes = ["augmix", "standard", "simclr", "noise", "denoising", "adversarial"]
    runs = []
    for k, r in enumerate(recipes):
        for seed in (0, 1):
            config = _config(seed, augment="none") | {"stage1": {"recipe": r}}
            runs.append(_write_run(tmp_path, f"{r}{seed}", config, 0.01 * k + 0.003 * seed))
    runs.append(_write_run(tmp_path, "old", _config(0), 0.05))  # no recipe: not in Table 1
    out = tmp_path / "out"
    report = compare(runs, out, wandb=False)
    table1 = (out / "table1.md").read_text()
    assert report["markdown"].startswith(table1)
    rows = [line for line in table1.splitlines() if line.startswith("| ") and "run" not in line]
    names = ["ResNet-18", "Denoising", "Adversarial train", "SimCLR", "Augment noise", "AugMix"]
    assert [r.split(" | ")[0][2:] for r in rows] == names  # the seed's order, "old" left out
    seed_values = {
        "ResNet-18": ("67.89", "71.40", "+3.51"),
        "Denoising": ("65.02", "68.86", "+3.84"),
        "Adversarial train": ("68.02", "70.86", "+2.84"),
        "SimCLR": ("70.28", "73.32", "+3.04"),
        "Augment noise": ("76.86", "77.98", "+1.12"),
        "AugMix": ("89.85", "89.89", "+0.04"),
    }
    for row in rows:
        cells = row.strip("|").split(" | ")
        name = cells[0].strip()
        assert tuple(c.strip() for c in cells[3:6]) == seed_values[name]
    # our numbers: the seed-pooled corruption means of each recipe's runs
    paths = [tmp_path / f"simclr{s}" for s in (0, 1)]
    row = next(r for r in rows if r.startswith("| SimCLR"))
    cells = [c.strip() for c in row.strip("|").split(" | ")]
    assert "stage 1 simclr" in cells[1] and cells[2] == "2"
    for col, (head, metric) in zip(
        range(6, 16),
        [
            (h, m)
            for m in ("acc", "ece")
            for h in ("feedforward", "introspective", "control", "control_hp", "diff")
        ],
        strict=True,
    ):
        if head == "control_hp":  # these runs predate the head: its column stays empty
            assert cells[col] == "–", (col, cells[col])
            continue
        if head == "diff":
            key = lambda e, m=metric: e["introspective"][m] - e["feedforward"][m]  # noqa: E731
        else:
            key = lambda e, h=head, m=metric: e[h][m]  # noqa: E731
        mean, std = _expected(paths, "corrupted", key)
        text = f"{100 * mean:+.2f}" if head == "diff" else f"{100 * mean:.2f}"
        assert cells[col] == f"{text} ± {100 * std:.2f}", (col, cells[col])
    clean = _expected(paths, "clean", lambda e: e["feedforward"]["acc"])
    assert cells[16] == f"{100 * clean[0]:.2f} ± {100 * clean[1]:.2f}"


def test_no_table1_without_stage1_recipes(runs, tmp_path: Path) -> None:
    report = compare([*runs["a"], *runs["b"]], tmp_path / "out", wandb=False)
    assert not (tmp_path / "out" / "table1.md").exists()
    assert "Table 1" not in report["markdown"]


def _severity_run(root: Path, name: str, seed: int, backbone: str, severities: list[int]) -> Path:
    """A finished run with every head of a full evaluation at ``severities``."""
    from introspect.stages.evaluation import HEADS as ALL_HEADS

    run = root / name
    run.mkdir(parents=True)
    metrics = {h: {"acc": 0.5 + 0.01 * i + 0.001 * seed, "ece": 0.05 + 0.002 * i}
               for i, h in enumerate(ALL_HEADS)}  # fmt: skip
    splits = {"clean": {"num_samples": 10, **metrics}}
    splits |= {f"fog/{s}": {"num_samples": 10, **metrics} for s in severities}
    config = _config(seed, backbone)
    config["eval"]["severities"] = severities
    results = {"run": {"config": config}, "splits": splits, "summary": metrics,
               "by_severity": {str(s): metrics for s in severities}}  # fmt: skip
    (run / "results.json").write_text(json.dumps(results))
    return run


@pytest.mark.parametrize(
    ("severities", "n_backbones"),
    [([3], 1), ([1, 5], 1), ([1, 3, 5], 1), ([1, 2, 3, 4, 5], 1), ([3], 4), ([1, 2, 3, 4, 5], 4)],
)
def test_severity_curves_fit_any_number_of_severities_and_runs(
    tmp_path: Path, severities: list[int], n_backbones: int
) -> None:
    """Title, panel titles and the legend are drawn inside the figure; each head has its own
    x position at every severity (one severity does not stack every head on one point)."""
    from introspect.jobs.compare import load_run
    from introspect.report.comparison import group_runs, severity_curves
    from introspect.stages.evaluation import HEADS as ALL_HEADS
    from tests.conftest import assert_drawn_inside

    names = [f"cifar_resnet20_with_a_long_backbone_name_{b}" for b in range(n_backbones)]
    paths = [
        _severity_run(tmp_path, f"a-rather-long-run-directory-name-{b}-seed{s}", s, n, severities)
        for b, n in enumerate(names)
        for s in range(2)
    ]
    fig = severity_curves(tmp_path / "c.png", group_runs([load_run(p) for p in paths]))
    assert_drawn_inside(fig)
    assert " ".join(fig.get_suptitle().split()).startswith("runs a-rather-long")
    legend = fig.legends[0]
    assert len(legend.get_texts()) == len(ALL_HEADS)
    assert {t.get_text() for t in legend.get_texts()} >= {"introspective + TS", "MC dropout"}
    for ax in fig.axes:
        xs = [x for line in ax.get_lines() for x in line.get_xdata()]
        assert len(set(xs)) == len(ALL_HEADS) * len(severities)  # no two series share an x
        low, high = ax.get_xlim()
        assert low < min(xs) and max(xs) < high
