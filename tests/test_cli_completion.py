"""Shell completion: the bash script, driven by bash itself as completion would call it,
completes commands, groups and their options, experiments, schema keys and their choices."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from introspect.config.schema import CHOICES, GROUPS

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

DRIVER = r"""
source "$1"
shift
COMP_LINE="$1"
COMP_POINT=${#COMP_LINE}
COMP_WORDS=($COMP_LINE)
[[ "$COMP_LINE" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
_introspect_complete
printf '%s\n' "${COMPREPLY[@]}"
"""


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "introspect", "--completion", "bash"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    path = tmp_path_factory.mktemp("completion") / "introspect.bash"
    path.write_text(done.stdout)
    return path


def _complete(script: Path, line: str) -> list[str]:
    bash = shutil.which("bash")
    assert bash is not None
    done = subprocess.run(
        [bash, "-c", DRIVER, "driver", str(script), line], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_commands(script: Path) -> None:
    assert _complete(script, "introspect ") == [
        "train", "evaluate", "compare", "scores", "explain", "explain-eval", "explain-network"
    ]  # fmt: skip
    assert _complete(script, "introspect ex") == ["explain", "explain-eval", "explain-network"]
    assert "compare" in _complete(script, "evaluate.py co")


def test_groups_options_and_experiments(script: Path) -> None:
    for group in GROUPS:
        options = sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))
        # After the '=', bash completes the option alone.
        assert _complete(script, f"train.py {group}=") == options
    experiments = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
    assert _complete(script, "introspect train experiment=") == experiments
    assert _complete(script, "train.py launcher=") == ["local", "slurm"]


def test_keys_and_choices(script: Path) -> None:
    assert _complete(script, "train.py stage1.epo") == ["stage1.epochs="]
    assert _complete(script, "train.py stage1.optim.name=") == list(CHOICES["stage1.optim.name"])
    assert _complete(script, "train.py launcher.jo") == ["launcher.jobs="]
    assert set(_complete(script, "train.py --c")) == {"--cfg"}
    assert _complete(script, "evaluate.py compare --wandb-m") == ["--wandb-mode"]
    assert _complete(script, "train.py eval.corr") == ["eval.corruptions=["]  # a list


def test_zsh_and_bad_shell() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = [sys.executable, "-m", "introspect", "--completion"]
    zsh = subprocess.run([*run, "zsh"], capture_output=True, text=True, env=env, timeout=120)
    assert zsh.returncode == 0 and "bashcompinit" in zsh.stdout
    assert "complete -F _introspect_complete" in zsh.stdout
    bad = subprocess.run([*run, "fish"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "--completion bash|zsh" in bad.stderr
