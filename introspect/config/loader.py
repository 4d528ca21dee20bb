"""Compose ``configs/`` groups, an experiment and overrides into one validated config."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from introspect.config.baselines import baseline_config_error, resolve_ensemble_config
from introspect.config.overrides import Override, OverrideError, parse_override, several_values
from introspect.config.schema import CHOICES, GROUPS, RANGES, Config


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and the fix."""


def default_config_dir() -> Path:
    """The ``configs/`` folder: ``$INTROSPECT_CONFIG_DIR``, else the one beside the package."""
    env = os.environ.get("INTROSPECT_CONFIG_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "configs"


def _suggest(word: str, options: Iterable[str]) -> str:
    options = sorted(options)
    close = difflib.get_close_matches(word, options, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"Valid: {', '.join(options)}.{hint}"


def _options(config_dir: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir / group).glob("*.yaml"))


def _read_yaml(path: Path) -> DictConfig:
    try:
        node = OmegaConf.load(path)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    except Exception as err:  # yaml.YAMLError from the parser
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: must hold a mapping of keys to values")
    return node


def _split_defaults(node: DictConfig, source: str, config_dir: Path) -> tuple[dict, DictConfig]:
    """Separate a file's ``defaults:`` mapping (group -> option) from the rest of its keys."""
    body = OmegaConf.to_container(node, resolve=False)
    assert isinstance(body, dict)
    defaults = body.pop("defaults", None) or {}
    if not isinstance(defaults, Mapping):
        raise ConfigError(
            f"{source}: 'defaults' must map a group to an option, e.g. 'data: digits'"
        )
    for group in defaults:
        if group not in GROUPS:
            raise ConfigError(
                f"{source}: unknown group {group!r} in defaults. {_suggest(group, GROUPS)}"
            )
    return dict(defaults), OmegaConf.create(body)


def _schema_keys(schema: DictConfig, path: str) -> list[str]:
    node: Any = schema
    for part in [p for p in path.split(".") if p]:
        if not isinstance(node, DictConfig):
            return []
        if part not in node:
            # A mapping of structured entries (e.g. eval.extra): the entry type's keys.
            element = node._metadata.element_type
            if not dataclasses.is_dataclass(element):
                return []
            node = OmegaConf.structured(element)
            continue
        node = node[part]
    return [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []


def _merge(cfg: DictConfig, layer: DictConfig, source: str, schema: DictConfig) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, layer)  # type: ignore[return-value]
    except ConfigKeyError as err:
        key = str(err.full_key or err.key)
        parent, _, leaf = key.rpartition(".")
        valid = _schema_keys(schema, parent)
        where = f"under {parent!r}" if parent else "at the top level"
        raise ConfigError(
            f"{source}: unknown key {key!r}. {_suggest(leaf, valid)} (keys {where})"
        ) from None
    except ValidationError as err:
        key = str(err.full_key)
        reason = str(err.msg).splitlines()[0]
        raise ConfigError(f"{source}: bad value for {key!r}: {reason}") from None


def named_ood_sets(cli: DictConfig, config_dir: Path) -> DictConfig:
    """``scores.ood=[svhn,textures,...]`` on the command line: the sets of
    ``configs/ood/<name>.yaml``, by name (``ConfigError`` for an unknown one)."""
    names = OmegaConf.select(cli, "scores.ood")
    if not isinstance(names, ListConfig):
        return cli
    sets = {}
    for name in names:
        path = config_dir / "ood" / f"{name}.yaml"
        if not path.is_file():
            hint = _suggest(str(name), _options(config_dir, "ood"))
            raise ConfigError(
                f"scores.ood: unknown OOD set {name!r}. {hint} (or give "
                "scores.ood.<name>.source/path/split)"
            )
        sets[str(name)] = _read_yaml(path)
    cli.scores.ood = sets
    return cli


def leaf_paths(node: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a nested mapping as ``{dotted.path: value}``."""
    if isinstance(node, Mapping) and node:
        found: dict[str, Any] = {}
        for key, value in node.items():
            found.update(leaf_paths(value, f"{prefix}{key}."))
        return found
    return {prefix[:-1]: node}


def _check_choices(cfg: DictConfig) -> None:
    for path, valid in CHOICES.items():
        value = OmegaConf.select(cfg, path)
        values = list(value) if isinstance(value, ListConfig) else [value]
        for item in values:
            if item not in valid:
                raise ConfigError(f"bad value {item!r} for {path!r}. {_suggest(str(item), valid)}")
    # Ranges and consistency of the baseline options (MC dropout, ensembles).
    message = baseline_config_error(cfg)
    if message is not None:
        raise ConfigError(message)


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of nested mappings and lists as ``{path: value}`` (list items as ``key[i]``)."""
    if isinstance(node, Mapping):
        found: dict[str, Any] = {}
        for key, value in node.items():
            found.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return found
    if isinstance(node, list):
        found = {}
        for i, value in enumerate(node):
            found.update(_leaves(value, f"{prefix}[{i}]"))
        return found
    return {prefix: node}


def first_interpolation(data: Any) -> str | None:
    """The path of the first value of ``data`` (plain mappings and lists) that holds an
    interpolation (``${...}``), or None."""
    for path, value in _leaves(data).items():
        if isinstance(value, str) and "${" in value:
            return path
    return None


def _refuse_interpolations(data: Any, source: Path | str) -> None:
    """``ConfigError`` when a saved file's ``data`` holds an interpolation: a saved config is
    data, and resolving it would read the environment or other files."""
    key = first_interpolation(data)
    if key is not None:
        raise ConfigError(
            f"{source}: {key} holds an interpolation ('${{...}}'); a saved config is data and "
            "is never resolved: remove it from the file (configs written by train.py hold none)"
        )


def _check_finite(cfg: DictConfig) -> None:
    """``ConfigError`` naming the first value that is a float NaN or infinity."""
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot resolve interpolation: {err}") from None
    for path, value in _leaves(plain).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"bad value {value!r} for {path!r}: must be a finite number")


def _bad_device_list(items: list[Any]) -> bool:
    return (
        not items
        or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in items)
        or len(set(items)) != len(items)
    )


def _devices_ok(devices: Any) -> bool:
    """Whether Lightning accepts ``trainer.devices``: a positive count, -1 (all), ``auto``,
    or device indices as a list or a comma-separated string."""
    if isinstance(devices, bool):
        return False
    if isinstance(devices, int):
        return devices >= 1 or devices == -1
    if isinstance(devices, ListConfig | list):
        return not _bad_device_list(list(devices))
    if not isinstance(devices, str):
        return False
    text = devices.strip()
    if text == "auto" or text == "-1":
        return True
    if "," in text:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        return all(p.isdigit() for p in parts) and not _bad_device_list([int(p) for p in parts])
    return text.isdigit() and int(text) >= 1


def _check_trainer(cfg: DictConfig) -> None:
    """Lightning's own checks of the pass-through ``trainer`` fields that have no fixed set of
    values (devices, batch limits), made before any work."""
    devices = cfg.trainer.devices
    if not _devices_ok(devices):
        raise ConfigError(
            f"bad value {devices!r} for 'trainer.devices': give a number of devices (>= 1), -1 "
            "(all), auto, or device indices such as [0,1] or '0,1'"
        )
    count = str(devices).strip()
    if cfg.trainer.accelerator == "cpu" and count != "auto" and not count.isdigit():
        raise ConfigError(
            f"bad value {devices!r} for 'trainer.devices' with trainer.accelerator=cpu: give a "
            "number of processes (>= 1) or auto"
        )
    for key in ("limit_train_batches", "limit_val_batches"):
        value = cfg.trainer[key]
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            ok = False
        elif isinstance(value, int):
            ok = value >= 0
        else:
            ok = 0 <= value <= 1
        if not ok:
            raise ConfigError(
                f"bad value {value!r} for 'trainer.{key}': give a number of batches (>= 0) or a "
                "fraction of them in [0, 1]"
            )


def _check_ranges(cfg: DictConfig) -> None:
    _check_finite(cfg)
    for path, valid in RANGES.items():
        value = OmegaConf.select(cfg, path)
        values = list(value) if isinstance(value, ListConfig) else [value]
        for item in values:
            if item is None or isinstance(item, bool) or not isinstance(item, int | float):
                continue  # None: an unset optional field; types are checked by the schema
            if not valid.contains(item):
                raise ConfigError(
                    f"bad value {item!r} for {path!r}: must lie in {valid.describe()}"
                )
    if cfg.data.val_fraction + cfg.data.test_fraction >= 1:
        raise ConfigError(
            f"data.val_fraction={cfg.data.val_fraction} and data.test_fraction="
            f"{cfg.data.test_fraction} leave no training images; their sum must be below 1"
        )


def _validate(cfg: DictConfig) -> None:
    """Choices, finite numbers in their ranges and Lightning's pass-through trainer fields."""
    _check_choices(cfg)
    _check_ranges(cfg)
    _check_trainer(cfg)


def load_config(args: Sequence[str] = (), *, config_dir: Path | str | None = None) -> DictConfig:
    """Compose the root default, ``experiment=NAME``, ``group=option`` and ``a.b=value`` arguments.

    Precedence (later wins): schema defaults, chosen group files, root ``config.yaml`` body,
    experiment body, command-line overrides. As in Hydra, ``+a.b=value`` adds a key that has no
    value yet, ``++a.b=value`` adds or overrides, ``~a.b`` (or ``~a.b=value``, only if it holds
    that value) deletes an entry of a mapping or resets a schema field to its default, and
    ``~group`` drops the group's option. Raises ``ConfigError`` before any work on an unknown
    key, a wrong type, a missing required value or an invalid choice; a failing ``key=a,b``
    gets the hint to sweep it with ``-m``.
    """
    try:
        return _compose(args, config_dir)
    except ConfigError as err:
        swept = [a for a in args if not a.startswith("~") and several_values(a)]
        if not swept:
            raise
        raise ConfigError(
            f"{err}. {swept[0]!r} gives several values: add -m to run each as its own job "
            f"(a sweep), or write a list as {swept[0].partition('=')[0]}=[...]"
        ) from None


def _delete(cfg: DictConfig, schema: DictConfig, key: str, value: str | None) -> None:
    """``~key[=value]`` on the composed ``cfg``: an entry of an open mapping is removed, a field
    of the schema gets its default back; ``ConfigError`` for an unknown key or another value."""
    parent_path, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_path) if parent_path else cfg
    if not isinstance(parent, DictConfig) or leaf not in parent:
        valid = list(parent.keys()) if isinstance(parent, DictConfig) else []
        where = f"under {parent_path!r}" if parent_path else "at the top level"
        raise ConfigError(
            f"~{key}: no key {key!r} to delete. {_suggest(leaf, map(str, valid))} (keys {where})"
        )
    if value is not None:
        expected = OmegaConf.from_dotlist([f"v={value}"]).v
        if parent[leaf] != expected:
            raise ConfigError(
                f"~{key}={value}: {key} holds {parent[leaf]!r}, not {value!r}; write ~{key} to "
                "delete it whatever its value"
            )
    if leaf in _schema_keys(schema, parent_path):
        default = OmegaConf.select(schema, key)
        parent[leaf] = default
        return
    del parent[leaf]


@dataclasses.dataclass
class _CommandLine:
    """The command-line overrides sorted by what they change."""

    experiment: str | None = None
    group_args: dict[str, str] = dataclasses.field(default_factory=dict)  # group=option
    added_groups: dict[str, str] = dataclasses.field(default_factory=dict)  # +group=option
    dropped: set[str] = dataclasses.field(default_factory=set)  # ~group
    dotlist: list[str] = dataclasses.field(default_factory=list)  # key=value, +key, ++key
    added: list[str] = dataclasses.field(default_factory=list)  # +key: must be new
    deletions: list[Override] = dataclasses.field(default_factory=list)  # ~key[=value]


def _parse_command_line(args: Sequence[str]) -> _CommandLine:
    """``args`` parsed into experiment, config-group choices, value overrides and deletions."""
    cli = _CommandLine()
    for arg in args:
        try:
            override = parse_override(arg)
        except OverrideError as err:
            raise ConfigError(str(err)) from None
        key, value = override.key, override.value
        if override.kind == "delete":
            if key in GROUPS and value is None:
                cli.dropped.add(key)
            elif key == "experiment" and value is None:
                cli.experiment = None
            else:
                cli.deletions.append(override)
        elif key == "experiment":
            cli.experiment = value
        elif key in GROUPS:
            (cli.added_groups if override.kind == "add" else cli.group_args)[key] = str(value)
        else:
            cli.dotlist.append(override.dotlist())
            if override.kind == "add":
                cli.added.append(key)
    return cli


def _layers(config_dir: Path, cli: _CommandLine) -> list[tuple[str, DictConfig]]:
    """The ``(source, config)`` layers to merge in order: the chosen option of every config
    group, the root config, the experiment, the command line."""
    root_file = config_dir / "config.yaml"
    if not root_file.is_file():
        raise ConfigError(
            f"no root config at {root_file}; set INTROSPECT_CONFIG_DIR to the configs/"
        )
    choices, root_body = _split_defaults(_read_yaml(root_file), str(root_file), config_dir)
    exp_body: DictConfig | None = None
    if cli.experiment:
        path = config_dir / "experiment" / f"{cli.experiment}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"unknown experiment {cli.experiment!r}. "
                f"{_suggest(cli.experiment, _options(config_dir, 'experiment'))}"
            )
        exp_defaults, exp_body = _split_defaults(_read_yaml(path), str(path), config_dir)
        choices.update(exp_defaults)
    for group, option in cli.added_groups.items():
        if choices.get(group) is not None:
            raise ConfigError(
                f"+{group}={option}: {group} already has the option {choices[group]!r}; choose "
                f"another with {group}={option} (no +)"
            )
    choices.update(cli.added_groups)
    choices.update(cli.group_args)
    for group in cli.dropped:
        choices.pop(group, None)

    layers: list[tuple[str, DictConfig]] = []
    for group in GROUPS:
        option = choices.get(group)
        if option is None:
            continue
        path = config_dir / group / f"{option}.yaml"
        if not path.is_file():
            valid = _options(config_dir, group)
            raise ConfigError(f"unknown {group} option {option!r}. {_suggest(option, valid)}")
        layers.append((str(path), OmegaConf.create({group: _read_yaml(path)})))
    layers.append((str(root_file), root_body))
    if exp_body is not None:
        layers.append((f"experiment {cli.experiment!r}", exp_body))
    try:
        overrides = OmegaConf.from_dotlist(cli.dotlist)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot parse command-line overrides {cli.dotlist}: {err}") from None
    layers.append(("command line", named_ood_sets(overrides, config_dir)))
    return layers


def _compose(args: Sequence[str], config_dir: Path | str | None) -> DictConfig:
    config_dir = Path(config_dir) if config_dir is not None else default_config_dir()
    cli = _parse_command_line(args)
    schema = OmegaConf.structured(Config)
    cfg = schema
    required: set[str] = set()
    for source, layer in _layers(config_dir, cli):
        if source == "command line":
            for key in cli.added:
                if OmegaConf.select(cfg, key, default=None) is not None:
                    raise ConfigError(
                        f"+{key}: {key} already has a value; override it with {key}=VALUE (no "
                        f"+), or ++{key}=VALUE to add or override"
                    )
        cfg = _merge(cfg, layer, source, schema)
        # Merging "???" onto a default keeps the default, so required values are tracked here:
        # a "???" marks a path required until a later layer gives it a value.
        for path, value in leaf_paths(OmegaConf.to_container(layer, resolve=False)).items():
            if value == "???":
                required.add(path)
            else:
                required.discard(path)
    cfg.experiment = cli.experiment
    for deletion in cli.deletions:
        _delete(cfg, schema, deletion.key, deletion.value)
        required.discard(deletion.key)

    missing = sorted(set(OmegaConf.missing_keys(cfg)) | required)
    if missing:
        raise ConfigError(f"missing required value(s): {', '.join(missing)}; set them as key=value")
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot resolve interpolation: {err}") from None
    _validate(cfg)
    resolve_ensemble_config(cfg)
    return cfg


# Every setting that imports code or unpickles files (``[]``: each element of a list), with what
# it does. In a saved config they are honoured only when the current command line gives them
# too (or with --trust-run), because a run directory is data. tests/test_faults_config.py
# checks that no such setting of the schema is missing here.
CODE_SETTINGS: dict[str, str] = {
    "backbone.name": "imports a module and runs its code",
    "backbone.trust_checkpoint": "unpickles the checkpoint, which can run any code",
    "backbone.ensemble_checkpoints[].name": "imports a module and runs its code",
}
# Groups a finished run can switch (how and where it is evaluated, not what was trained).
RUN_GROUPS = ("trainer", "logger")


def _setting_values(node: DictConfig, setting: str) -> list[tuple[str, Any]]:
    """The concrete ``(path, value)`` pairs of a ``CODE_SETTINGS`` key in ``node``: one pair,
    or one per list element for a ``a.b[].c`` key (paths then read ``a.b[i].c``)."""
    head, sep, rest = setting.partition("[].")
    if not sep:
        return [(setting, OmegaConf.select(node, setting, default=None))]
    items = OmegaConf.select(node, head, default=None)
    if not isinstance(items, ListConfig):
        return []
    return [
        (f"{head}[{i}].{path}", value)
        for i, item in enumerate(items)
        if isinstance(item, DictConfig)
        for path, value in _setting_values(item, rest)
    ]


def _runs_code(setting: str, value: Any) -> bool:
    if setting.endswith(".name"):
        return isinstance(value, str) and ":" in value
    return value is True


def _refuse_code(saved: DictConfig, cli: DictConfig, source: Path) -> None:
    """``ConfigError`` when ``saved`` imports code or unpickles unless ``cli`` says the same."""
    for setting, effect in CODE_SETTINGS.items():
        for path, value in _setting_values(saved, setting):
            if not _runs_code(setting, value):
                continue
            given = OmegaConf.select(cli, path, default=None)
            if given == value or (given is not None and not _runs_code(setting, given)):
                continue  # the user consents, or replaces it with a value that runs no code
            shown = str(value).lower() if isinstance(value, bool) else value
            repeat = setting.partition("[]")[0] if "[]" in setting else f"{path}={shown}"
            raise ConfigError(
                f"{source} sets {path}={shown} ({effect}); a run directory is data and is not "
                f"trusted: repeat {repeat} on the command line or pass --trust-run"
            )


def _group_section(config_dir: Path, group: str, option: str | None, schema: DictConfig) -> Any:
    """The ``group`` section of a new config with ``group=option`` (schema defaults when None)."""
    if option is None:
        return OmegaConf.structured(Config)[group]
    file = config_dir / group / f"{option}.yaml"
    if not file.is_file():
        valid = _options(config_dir, group)
        raise ConfigError(f"unknown {group} option {option!r}. {_suggest(option, valid)}")
    fresh = _merge(
        OmegaConf.structured(Config), OmegaConf.create({group: _read_yaml(file)}), str(file), schema
    )
    return fresh[group]


def _default_option(config_dir: Path, group: str) -> str | None:
    """The option of ``group`` chosen by the root ``config.yaml`` (None without one)."""
    root = config_dir / "config.yaml"
    if not root.is_file():
        return None
    defaults, _ = _split_defaults(_read_yaml(root), str(root), config_dir)
    option = defaults.get(group)
    return str(option) if option is not None else None


# Folders a saved config names that a command would create or write into: taken from the
# command line only; a saved value is replaced by the schema default (the user's own cache).
_SAVED_WRITE_LOCATIONS = ("eval.cache_dir", "stage2.cache_dir", "quality.cache_dir")
# Sources whose images live under data.root; for the others it is only a cache folder.
_ROOT_DATA_SOURCES = ("cifar10", "cifar100")


def _keep_writes_local(cfg: DictConfig, cli: DictConfig) -> None:
    """Make a saved config (merged with the command line ``cli``) write nowhere it names.

    Cache folders of the saved config become the schema defaults unless ``cli`` gives them.
    Unless ``cli`` gives ``data.root``, nothing is downloaded (``data.download=false``) and the
    saved ``data.root`` is kept only where it holds the run's images and exists (read only);
    otherwise the default cache replaces it."""
    defaults = OmegaConf.structured(Config)
    given = leaf_paths(OmegaConf.to_container(cli, resolve=False))
    for key in _SAVED_WRITE_LOCATIONS:
        if key not in given:
            OmegaConf.update(cfg, key, OmegaConf.select(defaults, key))
    if "data.root" in given:
        return
    cfg.data.download = False
    saved_root = Path(str(cfg.data.root)).expanduser()
    if cfg.data.source not in _ROOT_DATA_SOURCES or not saved_root.is_dir():
        cfg.data.root = defaults.data.root


def load_run_config(
    run_dir: Path | str,
    args: Sequence[str] = (),
    *,
    trust_run: bool = False,
    config_dir: Path | str | None = None,
) -> DictConfig:
    """The saved ``config.yaml`` of a finished run, validated, with ``trainer=``/``logger=``
    group choices and ``a.b=value`` overrides (later wins).

    The file is data: an interpolation (``${...}``) in it is refused, never resolved; its
    ``logger`` section is replaced by the default logger option (or ``logger=``, then
    ``logger.*`` overrides), so a record never chooses where results are sent. Settings of
    ``CODE_SETTINGS`` that import code or unpickle are refused unless ``args`` give them too or
    ``trust_run``. Saved cache folders and ``data.root`` are never written to
    (``_keep_writes_local``).
    """
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} not found: run= must name a run directory made by train.py")
    config_dir = Path(config_dir) if config_dir is not None else default_config_dir()
    groups: dict[str, str] = {}
    dotlist: list[str] = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ConfigError(f"argument {arg!r} is not of the form key=value")
        if key in RUN_GROUPS:
            groups[key] = value
        elif key in (*GROUPS, "experiment"):
            raise ConfigError(
                f"argument {arg!r}: the {key} of a finished run is fixed; evaluate other data "
                "as eval.extra.<name>.source=... or start a new run with train.py"
            )
        else:
            dotlist.append(arg)
    schema = OmegaConf.structured(Config)
    saved = _read_yaml(path)
    _refuse_interpolations(OmegaConf.to_container(saved, resolve=False), path)
    cfg = _merge(schema, saved, str(path), schema)
    # Where results are logged comes from this command line, never from the record: the saved
    # logger section is replaced by the default logger option unless logger= chooses another.
    groups.setdefault("logger", _default_option(config_dir, "logger"))
    for group, option in groups.items():
        # The option replaces the saved section, as it would have in train.py.
        cfg[group] = _group_section(config_dir, group, option, schema)
    try:
        cli = OmegaConf.from_dotlist(dotlist)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot parse overrides {dotlist}: {err}") from None
    cli = named_ood_sets(cli, config_dir)
    if not trust_run:
        _refuse_code(cfg, cli, path)
    cfg = _merge(cfg, cli, "command line", schema)
    _keep_writes_local(cfg, cli)
    _validate(cfg)
    return cfg


def save_config(cfg: DictConfig, path: Path | str) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(OmegaConf.to_yaml(cfg, resolve=True))
