"""Shell completion: ``python -m introspect --completion bash|zsh`` prints a script completing
the commands, their flags, config groups and their options, experiments and every config key
(from the schema and ``configs/``), for ``introspect``, ``introspect-train``,
``introspect-evaluate``, ``train.py`` and ``evaluate.py``."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from introspect.config.launcher import LauncherConfig
from introspect.config.loader import default_config_dir, leaf_paths
from introspect.config.schema import CHOICES, GROUPS, Config

SHELLS = ("bash", "zsh")
TRAIN_FLAGS = ("-m", "--multirun", "--cfg", "-c", "--help")
EVALUATE_COMMANDS = ("compare", "scores", "explain", "explain-eval", "explain-network")
EVALUATE_FLAGS = ("--trust-run", "--allow-modified", "--help")
COMPARE_FLAGS = (
    "--out",
    "--wandb",
    "--no-wandb",
    "--allow-modified",
    "--wandb-mode",
    "--wandb-project",
    "--wandb-entity",
)


def _options(config_dir: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir / group).glob("*.yaml"))


def train_words(config_dir: Path) -> list[str]:
    """What ``train`` completes: flags, ``group=option``, ``experiment=NAME``, ``key=`` for
    every schema key (``key=value`` for keys with a fixed set of values, ``key=[`` for lists) and
    the sweep keys."""
    words = list(TRAIN_FLAGS)
    for group in (*GROUPS, "experiment", "launcher"):
        words += [f"{group}={option}" for option in _options(config_dir, group)]
    keys = leaf_paths(OmegaConf.to_container(OmegaConf.structured(Config), resolve=False))
    for key, default in sorted(keys.items()):
        choices = CHOICES.get(key)
        if isinstance(default, list):
            words.append(f"{key}=[")  # a list: key=[a,b]
        elif choices:
            words += [f"{key}={c}" for c in choices]
        else:
            words.append(f"{key}=")
    launcher = OmegaConf.to_container(OmegaConf.structured(LauncherConfig))
    assert isinstance(launcher, dict)
    words += [f"launcher.{key}=" for key in launcher if key != "name"]
    words.append("sweep.dir=")
    return words


def evaluate_words(config_dir: Path) -> list[str]:
    """What ``evaluate`` completes after its command: ``run=``, ``tag=``, flags, the groups a
    finished run may switch and every schema key."""
    words = ["run=", "tag=", *EVALUATE_FLAGS, *COMPARE_FLAGS]
    for group in ("trainer", "logger"):
        words += [f"{group}={option}" for option in _options(config_dir, group)]
    train = train_words(config_dir)
    words += [w for w in train if w.partition("=")[0].count(".") and not w.startswith("launcher")]
    return words


_BASH = r"""# introspect completion for bash: source <(python -m introspect --completion bash)
_introspect_complete() {
    local line="${COMP_LINE:0:$COMP_POINT}"
    local cur="${line##*[[:space:]]}"
    local prog="${COMP_WORDS[0]##*/}"
    local first=""
    [[ $COMP_CWORD -gt 1 ]] && first="${COMP_WORDS[1]}"
    local words
    case "$prog" in
        introspect)
            if [[ $COMP_CWORD -le 1 ]]; then
                words=%(commands)s
            elif [[ "$first" == "train" ]]; then
                words=%(train)s
            else
                words=%(evaluate)s
            fi ;;
        introspect-train|train.py) words=%(train)s ;;
        *)
            if [[ $COMP_CWORD -le 1 ]]; then
                words="%(evaluate_commands)s "%(evaluate)s
            else
                words=%(evaluate)s
            fi ;;
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
    # bash splits words at '=' and ':': complete only the part after the last one.
    if [[ "$cur" == *[=:]* ]]; then
        local prefix="${cur%%"${cur##*[=:]}"}"
        COMPREPLY=("${COMPREPLY[@]#"$prefix"}")
    fi
    if [[ ${#COMPREPLY[@]} -eq 1 && "${COMPREPLY[0]}" == *[=[] ]]; then
        compopt -o nospace 2>/dev/null
    fi
}
complete -F _introspect_complete introspect introspect-train introspect-evaluate \
    train.py evaluate.py ./train.py ./evaluate.py
"""

_ZSH = """# introspect completion for zsh: source <(python -m introspect --completion zsh)
autoload -U +X bashcompinit && bashcompinit
"""


def completion_script(shell: str, commands: Sequence[str], config_dir: Path | None = None) -> str:
    """The completion script of ``shell`` (bash or zsh; zsh runs the bash one through
    ``bashcompinit``) for the ``introspect`` ``commands``; ``ValueError`` for another shell."""
    if shell not in SHELLS:
        raise ValueError(f"no completion for shell {shell!r}; one of {', '.join(SHELLS)}")
    config_dir = config_dir or default_config_dir()
    values = {
        "commands": shlex.quote(" ".join(commands)),
        "train": shlex.quote(" ".join(train_words(config_dir))),
        "evaluate": shlex.quote(" ".join(evaluate_words(config_dir))),
        "evaluate_commands": " ".join(EVALUATE_COMMANDS),
    }
    script = _BASH % values
    return script if shell == "bash" else _ZSH + script.split("\n", 1)[1]
