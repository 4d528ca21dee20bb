"""How a sweep's jobs are launched: ``launcher=local|slurm`` plus ``launcher.key=value``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from introspect.config.loader import ConfigError, _merge, _read_yaml, _suggest
from introspect.config.schema import Range

LAUNCHERS = ("local", "slurm")


@dataclass
class LauncherConfig:
    """Where the jobs of a sweep run: ``local`` (``jobs`` processes at a time here) or ``slurm``
    (a job array submitted with submitit)."""

    name: str = "local"
    jobs: int = 1
    partition: str | None = None
    timeout_min: int = 60
    cpus_per_task: int = 2
    gpus_per_node: int = 0
    mem_gb: int = 16
    array_parallelism: int = 16
    additional_parameters: dict[str, str] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)
    wait: bool = True


LAUNCHER_RANGES: dict[str, Range] = {
    "jobs": Range(1),
    "timeout_min": Range(1),
    "cpus_per_task": Range(1),
    "gpus_per_node": Range(0),
    "mem_gb": Range(1),
    "array_parallelism": Range(1),
}


def load_launcher(choice: str, overrides: Sequence[str], config_dir: Path) -> DictConfig:
    """The launcher ``choice`` (a file of ``configs/launcher/``) with ``launcher.key=value``
    overrides applied, validated; raises ``ConfigError`` naming the fix."""
    path = config_dir / "launcher" / f"{choice}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in (config_dir / "launcher").glob("*.yaml"))
        raise ConfigError(f"unknown launcher option {choice!r}. {_suggest(choice, options)}")
    schema = OmegaConf.structured(LauncherConfig)
    cfg = _merge(schema, _read_yaml(path), str(path), schema)
    dotlist = [a.removeprefix("launcher.") for a in overrides]
    try:
        cli = OmegaConf.from_dotlist(dotlist)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot parse launcher overrides {list(overrides)}: {err}") from None
    cfg = _merge(cfg, cli, "command line (launcher.*)", schema)
    if cfg.name not in LAUNCHERS:
        raise ConfigError(
            f"bad value {cfg.name!r} for 'launcher.name'. {_suggest(cfg.name, LAUNCHERS)}"
        )
    for key, valid in LAUNCHER_RANGES.items():
        if not valid.contains(cfg[key]):
            raise ConfigError(
                f"bad value {cfg[key]!r} for 'launcher.{key}': must lie in {valid.describe()}"
            )
    return cfg
