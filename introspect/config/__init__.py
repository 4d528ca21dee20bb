"""Validated, composable configuration (OmegaConf YAML groups over dataclass schemas)."""

from introspect.config.loader import (
    ConfigError,
    default_config_dir,
    load_config,
    load_run_config,
    save_config,
)
from introspect.config.schema import CHOICES, GROUPS, Config

__all__ = [
    "CHOICES",
    "GROUPS",
    "Config",
    "ConfigError",
    "default_config_dir",
    "load_config",
    "load_run_config",
    "save_config",
]
