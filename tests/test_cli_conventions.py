"""Hydra's override conventions (+key, ++key, ~key, --cfg job, -m --cfg, sweep.* without -m, a
'-m' hint for comma values) and the parallel local launcher (launcher.jobs=N)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from introspect.config import ConfigError, load_config
from introspect.config.launcher import load_launcher
from introspect.config.overrides import Override, parse_override, several_values

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TINY = [
    "data=synthetic",
    "data.num_samples=120",
    "data.image_size=8",
    "stage1.epochs=1",
    "stage2.head.epochs=1",
    "stage2.head.hidden=[16]",
    "eval.corruptions=[contrast]",
    "eval.severities=[5]",
]


def _python(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, **kwargs
    )


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("a.b=1", Override("set", "a.b", "1")),
        ("+a.b=1", Override("add", "a.b", "1")),
        ("++a.b=x=y", Override("force", "a.b", "x=y")),
        ("~a.b", Override("delete", "a.b", None)),
        ("~a.b=3", Override("delete", "a.b", "3")),
    ],
)
def test_parse_override(arg: str, expected: Override) -> None:
    assert parse_override(arg) == expected


def test_several_values() -> None:
    assert several_values("a=1,2") and several_values("a=range(0,2)")
    assert not several_values("a=[1,2]") and not several_values("a=1")


def test_add_force_and_delete() -> None:
    base = load_config([])
    assert "jpeg" not in base.eval.extra
    cfg = load_config(["+eval.extra.jpeg.source=npz", "+eval.extra.jpeg.path=x.npz"])
    assert cfg.eval.extra.jpeg.source == "npz" and cfg.eval.extra.jpeg.path == "x.npz"
    with pytest.raises(ConfigError, match=r"already has a value; override it with stage1.epochs="):
        load_config(["+stage1.epochs=3"])
    assert load_config(["++stage1.epochs=3"]).stage1.epochs == 3
    # ~key: a schema field gets its default back, a mapping entry is removed.
    assert load_config(["stage1.epochs=7", "~stage1.epochs"]).stage1.epochs == base.stage1.epochs
    assert load_config(["stage1.epochs=7", "~stage1.epochs=7"]).stage1.epochs == 15
    with pytest.raises(ConfigError, match="holds 7, not '8'"):
        load_config(["stage1.epochs=7", "~stage1.epochs=8"])
    cfg = load_config(["+eval.extra.jpeg.source=npz", "~eval.extra.jpeg"])
    assert "jpeg" not in cfg.eval.extra
    assert list(load_config(["~eval.corruptions"]).eval.corruptions) == []
    with pytest.raises(ConfigError, match="no key 'stage1.epoch' to delete.*Did you mean 'epochs'"):
        load_config(["~stage1.epoch"])


def test_groups_add_and_drop() -> None:
    with pytest.raises(ConfigError, match=r"\+logger=wandb: logger already has the option"):
        load_config(["+logger=wandb"])
    dropped = load_config(["trainer=cpu", "~trainer"])
    assert dropped.trainer == load_config(["~trainer"]).trainer


def test_comma_values_without_m_hint_at_a_sweep() -> None:
    with pytest.raises(ConfigError, match=r"'stage1.epochs=3,4' gives several values: add -m"):
        load_config(["stage1.epochs=3,4"])


def test_cfg_job_and_cfg_hydra() -> None:
    shown = _python(["train.py", "--cfg", "job", "stage1.epochs=3"], timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert yaml.safe_load(shown.stdout)["stage1"]["epochs"] == 3
    bad = _python(["train.py", "--cfg", "hydra"], timeout=120)
    assert bad.returncode == 2 and "write --cfg job" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_sweep_settings_without_m_are_ignored_with_a_note(tmp_path: Path) -> None:
    shown = _python(["train.py", "-c", f"sweep.dir={tmp_path}", "launcher.jobs=2"], timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "ignored without -m" in shown.stderr and "sweep.dir" in shown.stderr
    assert "sweep" not in yaml.safe_load(shown.stdout)


def test_multirun_cfg_prints_every_job(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    shown = _python(
        ["train.py", "-m", "--cfg", "job", "run.seed=0,1,2", f"sweep.dir={sweep_dir}"],
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    docs = shown.stdout.split("# job ")[1:]
    assert [d.split(":")[0] for d in docs] == ["1/3", "2/3", "3/3"]
    assert [yaml.safe_load(d.partition("\n")[2])["run"]["seed"] for d in docs] == [0, 1, 2]
    assert not sweep_dir.exists()


def test_launcher_jobs_is_validated() -> None:
    assert load_launcher("local", ["launcher.jobs=3"], CONFIGS).jobs == 3
    with pytest.raises(ConfigError, match="launcher.jobs"):
        load_launcher("local", ["launcher.jobs=0"], CONFIGS)


@pytest.mark.slow
def test_local_launcher_runs_two_jobs_in_parallel(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = _python(
        [
            "train.py",
            "-m",
            *TINY,
            f"stage2.cache_dir={tmp_path / 'cache'}",
            "run.seed=0,1",
            "launcher=local",
            "launcher.jobs=2",
            f"sweep.dir={sweep_dir}",
        ],
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert [j["state"] for j in manifest["jobs"]] == ["complete", "complete"]
    assert manifest["launcher"]["jobs"] == 2
    starts = [ln for ln in proc.stdout.splitlines() if "started" in ln]
    assert len(starts) == 2
    # Both were started before either finished: the two processes overlapped.
    lines = proc.stdout.splitlines()
    first_done = next(i for i, ln in enumerate(lines) if ln.endswith("complete"))
    assert all(lines.index(s) < first_done for s in starts)
    for job in manifest["jobs"]:
        run_dir = Path(job["run_dir"])
        assert (run_dir / "results.json").is_file()
        assert (sweep_dir / f"{run_dir.name}.log").stat().st_size > 0
    assert "±" in (sweep_dir / "comparison.md").read_text()
