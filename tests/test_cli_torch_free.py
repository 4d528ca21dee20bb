"""Finished-run comparisons and every config error exit without importing torch (subprocesses
whose ``sitecustomize`` makes any import of torch, Lightning or torchmetrics fail loudly)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_compare import _config, _write_run

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "torchmetrics", "lightning", "pytorch_lightning")
BLOCKER = f"""
import sys

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {HEAVY!r}:
            sys.stderr.write("TORCH-IMPORTED " + name + "\\n")
            raise ImportError("blocked by the test: " + name)

sys.meta_path.insert(0, _NoTorch())
"""


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_blocker_works(tmp_path: Path) -> None:
    done = _run(tmp_path, "-c", "import torch")
    assert done.returncode != 0 and "TORCH-IMPORTED torch" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train.py", "eval.corruptions=[fogg]"], "Did you mean 'fog'?"),
        (["train.py", "eval.corruptions=[fog,snow,fog2]"], "'fog2' for 'eval.corruptions'"),
        (["train.py", "data=digitz"], "unknown data option 'digitz'"),
        (["train.py", "stage1.epochs=abc"], "stage1.epochs"),
        (["train.py", "stage1.optim.name=adam"], "Did you mean 'adamw'?"),
        (["train.py", "nosuchkey=1"], "unknown key 'nosuchkey'"),
        (["evaluate.py", "compare"], "give at least one run directory"),
        (["evaluate.py", "compare", "--bogus"], "unknown option '--bogus'"),
        (["evaluate.py", "compare", "no/such/run"], "is not a run directory"),
        (["evaluate.py", "run=no/such/run"], "config.yaml not found"),
        (["evaluate.py", "scores"], "give exactly one run="),
        (["-m", "introspect", "nosuchcommand"], "unknown command 'nosuchcommand'"),
        (["-m", "introspect"], "usage: python -m introspect"),
    ],
)
def test_errors_exit_2_without_torch(tmp_path: Path, args: list[str], message: str) -> None:
    done = _run(tmp_path, *[str(ROOT / a) if a.endswith(".py") else a for a in args])
    assert "TORCH-IMPORTED" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stderr
    assert message in done.stdout + done.stderr


def test_compare_of_finished_runs_without_torch(tmp_path: Path) -> None:
    runs = [_write_run(tmp_path / "runs", f"s{s}", _config(s), 0.01 * s) for s in range(2)]
    out = tmp_path / "cmp"
    done = _run(tmp_path, str(ROOT / "evaluate.py"), "compare", *map(str, runs), "--out", str(out))
    assert "TORCH-IMPORTED" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    assert (out / "comparison.md").is_file() and (out / "comparison.csv").is_file()
    assert "feed-forward" in done.stdout or "FF" in done.stdout


def test_corruption_names_match_the_registry() -> None:
    from introspect.config.schema import CORRUPTIONS
    from introspect.corruptions.transforms import ALL_NAMES

    assert CORRUPTIONS == ALL_NAMES


def test_active_strategies_match_the_registry() -> None:
    from introspect.active.heuristics import STRATEGIES
    from introspect.config.schema import CHOICES

    assert CHOICES["active.strategies"] == STRATEGIES
