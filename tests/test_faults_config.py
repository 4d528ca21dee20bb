"""Fault injection into configs and records: a saved config or results file is data. Planted
interpolations are refused (never resolved), a record's logger never sends anything online,
every setting that imports code or unpickles is listed, non-finite numbers and Lightning
pass-through values that Lightning would reject stop before any work."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import shutil
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

import evaluate
import train
from introspect.config import ConfigError, load_config, load_run_config, save_config
from introspect.config.loader import CODE_SETTINGS, _validate
from introspect.config.schema import CHOICES, Config
from introspect.jobs.job import job_settings
from introspect.runs.rundir import check_run_dir


def check_config(cfg: DictConfig) -> Path:
    """``check_run_dir`` for the run of ``cfg``."""
    settings = job_settings(cfg)
    return check_run_dir(settings.run, settings.config)


REPO = Path(__file__).resolve().parents[1]

TINY = [
    "data=synthetic",
    "data.num_samples=160",
    "data.image_size=8",
    "stage1.epochs=1",
    "stage2.head.epochs=1",
    "stage2.head.hidden=[16]",
    "eval.corruptions=[contrast]",
    "eval.severities=[5]",
    "trainer.enable_progress_bar=false",
]

SECRET_VAR = "INTROSPECT_FAULT_SECRET"
SECRET = "s3cr3t-7f1e9c-token"
ATTACKER = {
    "wandb": True,
    "wandb_mode": "online",
    "project": "attacker-project",
    "entity": "attacker-team",
}


@pytest.fixture(scope="module")
def finished(finished_run: Path) -> Path:
    """One finished tiny run, shared: the tests change copies of it only."""
    return finished_run


def _copy(run_dir: Path, tmp_path: Path, name: str = "copy") -> Path:
    target = tmp_path / name
    shutil.copytree(run_dir, target)
    return target


def _edit_config(run_dir: Path, **values: Any) -> None:
    """Set dotted keys of the run's saved config.yaml as written (nothing resolved)."""
    path = run_dir / "config.yaml"
    cfg = OmegaConf.load(path)
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, merge=False)
    OmegaConf.save(cfg, path)


def _edit_record(run_dir: Path, **sections: Any) -> None:
    """Replace sections of the config saved in the run's results.json, and seal the edited
    record again as an attacker can (the digest is no signature): what the record says must
    be refused or ignored on its own merits, not only because the digest no longer matches."""
    from introspect.runs.integrity import write_sealed

    path = run_dir / "results.json"
    results = json.loads(path.read_text())
    results["run"]["config"].update(sections)
    write_sealed(path, results, run_dir)


def _files_holding(root: Path, text: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# --- defect 3: interpolations of saved configs and records are never resolved ------------------


@pytest.mark.slow
@pytest.mark.parametrize("command", [[], ["scores"], ["explain"]])
def test_a_planted_interpolation_is_refused_and_never_resolved(
    finished: Path, tmp_path: Path, monkeypatch, capsys, command: list[str]
) -> None:
    monkeypatch.setenv(SECRET_VAR, SECRET)
    run_dir = _copy(finished, tmp_path)
    _edit_config(run_dir, **{"run.name": "${oc.env:" + SECRET_VAR + "}"})
    assert evaluate.main([*command, f"run={run_dir}"]) == 2
    out, err = capsys.readouterr()
    line = _one_line(err)
    assert "run.name" in line and str(run_dir / "config.yaml") in line
    assert "interpolation" in line and SECRET not in out + err
    assert not (run_dir / "evaluations").exists()
    assert _files_holding(tmp_path, SECRET) == []


@pytest.mark.slow
def test_an_interpolation_in_a_list_element_is_found(finished: Path, tmp_path: Path) -> None:
    run_dir = _copy(finished, tmp_path)
    _edit_config(run_dir, **{"eval.corruptions": ["contrast", "${oc.env:HOME}"]})
    with pytest.raises(ConfigError, match=r"eval\.corruptions\[1\] holds an interpolation"):
        load_run_config(run_dir)


def test_resume_compares_a_planted_interpolation_without_resolving_it(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv(SECRET_VAR, SECRET)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    args = [*TINY, f"run.dir={run_dir}"]
    saved = load_config(args)
    saved.data.root = "${oc.env:" + SECRET_VAR + "}"
    OmegaConf.save(saved, run_dir / "config.yaml")
    with pytest.raises(ConfigError) as caught:
        check_config(load_config([*args, "run.resume=true"]))
    message = str(caught.value)
    assert "data.root holds an interpolation" in message and SECRET not in message


@pytest.mark.slow
def test_compare_refuses_a_record_with_an_interpolation(
    finished: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv(SECRET_VAR, SECRET)
    run_dir = _copy(finished, tmp_path)
    record = json.loads((run_dir / "results.json").read_text())["run"]["config"]
    _edit_record(run_dir, backbone={**record["backbone"], "name": "${oc.env:" + SECRET_VAR + "}"})
    out = tmp_path / "cmp"
    assert evaluate.main(["compare", str(run_dir), "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "run.config.backbone.name holds an interpolation" in line
    assert str(run_dir / "results.json") in line and not out.exists()


def test_the_users_own_configs_keep_their_interpolations(monkeypatch) -> None:
    monkeypatch.setenv(SECRET_VAR, "/data/mine")
    cfg = load_config(["data.path=${oc.env:" + SECRET_VAR + "}"])
    assert cfg.data.path == "/data/mine"


# --- defect 4: a record never chooses where results are sent ---------------------------------


class _WandbRecorder:
    """Stands in for ``wandb.init``: records its arguments, returns a run that logs nothing."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return self

    def log(self, data: dict) -> None:
        pass

    def finish(self) -> None:
        pass


@pytest.fixture
def wandb_init(monkeypatch) -> _WandbRecorder:
    import wandb

    recorder = _WandbRecorder()
    monkeypatch.setattr(wandb, "init", recorder)
    return recorder


def _planted_logger_run(finished: Path, tmp_path: Path, name: str = "copy") -> Path:
    run_dir = _copy(finished, tmp_path, name)
    _edit_config(run_dir, logger=ATTACKER)
    _edit_record(run_dir, logger=ATTACKER)
    return run_dir


@pytest.mark.slow
def test_compare_never_takes_wandb_settings_from_a_record(
    finished: Path, tmp_path: Path, wandb_init: _WandbRecorder
) -> None:
    run_dir = _planted_logger_run(finished, tmp_path)
    assert evaluate.main(["compare", str(run_dir), "--out", str(tmp_path / "a")]) == 0
    assert wandb_init.calls == []  # W&B is off unless the command line asks for it
    assert evaluate.main(["compare", str(run_dir), "--out", str(tmp_path / "b"), "--wandb"]) == 0
    (call,) = wandb_init.calls
    assert (call["mode"], call["entity"], call["project"]) == ("offline", None, "introspect")
    # Online, to an entity of the user's choosing: only when the command line says so.
    argv = ["--wandb", "--wandb-mode", "online", "--wandb-entity", "mine"]
    assert evaluate.main(["compare", str(run_dir), "--out", str(tmp_path / "c"), *argv]) == 0
    assert (wandb_init.calls[-1]["mode"], wandb_init.calls[-1]["entity"]) == ("online", "mine")


def test_compare_of_active_runs_never_takes_wandb_settings_from_a_record(
    tmp_path: Path, wandb_init: _WandbRecorder
) -> None:
    from introspect.jobs.compare import compare
    from tests.test_active import _fake_run

    runs = [_fake_run(tmp_path, seed, {"FF": 0.8, "INT": 0.9}) for seed in (0, 1)]
    for run in runs:
        results = json.loads((run / "active.json").read_text())
        results["run"]["config"]["logger"] = ATTACKER
        (run / "active.json").write_text(json.dumps(results))
    compare(runs, tmp_path / "a")
    assert wandb_init.calls == []
    compare(runs, tmp_path / "b", wandb=True)
    (call,) = wandb_init.calls
    assert (call["mode"], call["entity"]) == ("offline", None)


@pytest.mark.slow
def test_a_loaded_run_config_takes_its_logger_from_the_command_line(
    finished: Path, tmp_path: Path
) -> None:
    run_dir = _planted_logger_run(finished, tmp_path)
    default = OmegaConf.to_container(load_config([]).logger)
    assert OmegaConf.to_container(load_run_config(run_dir).logger) == default
    chosen = load_run_config(run_dir, ["logger=wandb"]).logger
    assert chosen.wandb and chosen.wandb_mode == "offline" and chosen.entity is None
    given = load_run_config(run_dir, ["logger.wandb=true", "logger.entity=mine"]).logger
    assert given.wandb and given.entity == "mine" and given.wandb_mode == "offline"


@pytest.mark.slow
def test_reevaluation_never_sends_a_record_online(
    finished: Path, tmp_path: Path, monkeypatch, wandb_init: _WandbRecorder
) -> None:
    import lightning.pytorch.loggers as loggers

    made: list[dict[str, Any]] = []

    def wandb_logger(**kwargs: Any) -> None:
        made.append(kwargs)
        raise AssertionError(f"a W&B logger was built: {kwargs}")

    monkeypatch.setattr(loggers, "WandbLogger", wandb_logger)
    run_dir = _planted_logger_run(finished, tmp_path)
    assert evaluate.main([f"run={run_dir}", "tag=planted"]) == 0
    assert made == [] and wandb_init.calls == []
    assert (run_dir / "evaluations" / "planted" / "results.json").is_file()
    assert _files_holding(run_dir / "evaluations", "attacker-team") == []


# --- defect 7: every setting that imports code or unpickles is listed ---------------------------

# Leaf names of schema fields that could name code or a file to unpickle.
_CODE_LIKE = re.compile(
    r"(^|_)(name|import|module|class|target|factory|callable|trust|pickle|checkpoint|path|"
    r"plugin|hook|loader|script|command)s?($|_)"
)
# Fields matching _CODE_LIKE that are data, and why (fields with fixed CHOICES are data too).
DATA_SETTINGS = {
    "run.name": "a folder name",
    "backbone.checkpoint": "read with torch.load(weights_only=True) unless trust_checkpoint",
    "backbone.ensemble_checkpoints[].checkpoint": "read like backbone.checkpoint",
    "data.path": "images read as files and arrays (np.load(allow_pickle=False))",
    "data.test_path": "as data.path",
    "eval.extra.<name>.path": "as data.path",
    "eval.extra.<name>.test_path": "as data.path",
    "scores.ood.<name>.path": "as data.path",
    "scores.ood.<name>.test_path": "as data.path",
    "quality.path": "image files of a quality database",
    "scores.trust": "switches the trust task (AUAC/AUFC) on",
    "stage2.features.per_class": "a switch of the gradient features",
}
# Where the package imports code or unpickles, and the settings that choose what (none: fixed
# names in the package itself).
CODE_SITES = {
    "introspect/backbones/registry.py": ("backbone.name", "backbone.ensemble_checkpoints[].name"),
    "introspect/backbones/checkpoint.py": ("backbone.trust_checkpoint",),
    "introspect/lazy.py": (),  # imports a package's own submodules on first use
    "introspect/__init__.py": (),  # imports the public API's fixed modules on first use
    "introspect/runs/provenance.py": (),
}
_CODE_CALLS = re.compile(
    r"import_module\(|__import__\(|weights_only=(?!True)|pickle\.loads?\(|allow_pickle=True|"
    r"\bexec\(|\beval\((?!\))|dill\.|cloudpickle|marshal\.loads?\("
)


def _schema_fields(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every leaf field of a schema dataclass as ``{path: type}``: list elements that are
    dataclasses as ``a[].b``, mapping values that are dataclasses as ``a.<name>.b``."""
    found: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path, kind = f"{prefix}{f.name}", hints[f.name]
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if dataclasses.is_dataclass(kind):
            found.update(_schema_fields(kind, f"{path}."))
        elif origin is list and dataclasses.is_dataclass(args[0]):
            found.update(_schema_fields(args[0], f"{path}[]."))
        elif origin is dict and dataclasses.is_dataclass(args[1]):
            found.update(_schema_fields(args[1], f"{path}.<name>."))
        else:
            found[path] = kind
    return found


def test_every_code_running_setting_of_the_schema_is_listed() -> None:
    fields = _schema_fields(Config)
    code_like = {p for p in fields if _CODE_LIKE.search(p.rpartition(".")[2])}
    assert "backbone.ensemble_checkpoints[].name" in code_like  # the walk reaches list items
    unclassified = code_like - set(CODE_SETTINGS) - set(DATA_SETTINGS) - set(CHOICES)
    assert not unclassified, (
        f"{sorted(unclassified)}: list each in loader.CODE_SETTINGS if it can import code or "
        "unpickle, else in DATA_SETTINGS here with the reason"
    )
    assert set(CODE_SETTINGS) <= set(fields) and set(DATA_SETTINGS) <= set(fields)
    assert not set(CODE_SETTINGS) & set(DATA_SETTINGS)


def test_every_place_that_imports_code_or_unpickles_is_gated_by_a_listed_setting() -> None:
    sites = {
        str(p.relative_to(REPO))
        for p in (REPO / "introspect").rglob("*.py")
        if _CODE_CALLS.search(p.read_text())
    }
    assert sites == set(CODE_SITES), "classify the new place in CODE_SITES (and CODE_SETTINGS)"
    for settings in CODE_SITES.values():
        assert set(settings) <= set(CODE_SETTINGS)


def _ensemble_run(tmp_path: Path, member: str) -> Path:
    run_dir = tmp_path / "ensemble-run"
    run_dir.mkdir(parents=True)
    members = f"[{{checkpoint: a.ckpt}}, {{name: '{member}', checkpoint: b.ckpt}}]"
    cfg = load_config(
        [
            *TINY,
            "backbone.mean=[0.5,0.5,0.5]",
            "backbone.std=[0.5,0.5,0.5]",
            f"backbone.ensemble_checkpoints={members}",
        ]
    )
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


def test_a_saved_ensemble_member_import_path_is_refused(tmp_path: Path, capsys) -> None:
    run_dir = _ensemble_run(tmp_path, "os:system")
    assert evaluate.main([f"run={run_dir}"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "backbone.ensemble_checkpoints[1].name=os:system" in line and "--trust-run" in line
    assert not (run_dir / "evaluations").exists()
    # The user consents by repeating the members, or with --trust-run.
    members = "[{checkpoint: a.ckpt}, {name: 'os:system', checkpoint: b.ckpt}]"
    given = load_run_config(run_dir, [f"backbone.ensemble_checkpoints={members}"])
    assert given.backbone.ensemble_checkpoints[1].name == "os:system"
    assert load_run_config(run_dir, trust_run=True).backbone.ensemble_checkpoints[1].name
    # A registered architecture runs no user code: no consent needed.
    assert load_run_config(_ensemble_run(tmp_path / "plain", "small_cnn")).backbone


# --- defect 8: non-finite numbers and Lightning's pass-through fields -------------------------


def _float_fields() -> list[tuple[str, bool]]:
    """``(path, is_list)`` of every float and list-of-float field of the schema (outside
    lists and mappings of entries)."""
    out = []
    for path, kind in _schema_fields(Config).items():
        if "[]" in path or "<name>" in path:
            continue
        if isinstance(kind, types.UnionType):  # an optional field: the type beside None
            (kind,) = set(typing.get_args(kind)) - {type(None)}
        if kind is float:
            out.append((path, False))
        elif typing.get_origin(kind) is list and typing.get_args(kind) == (float,):
            out.append((path, True))
    return out


FLOAT_FIELDS = _float_fields()


@pytest.fixture(scope="module")
def composed() -> DictConfig:
    """The default config, composed once (each test changes a copy)."""
    return load_config([])


def test_the_float_fields_are_found() -> None:
    paths = dict(FLOAT_FIELDS)
    assert paths["stage1.optim.lr"] is False and paths["backbone.mean"] is True
    assert paths["trainer.gradient_clip_val"] is False and len(paths) > 50


@pytest.mark.parametrize(("path", "is_list"), FLOAT_FIELDS, ids=[p for p, _ in FLOAT_FIELDS])
def test_every_float_field_refuses_nan_and_infinity(
    composed: DictConfig, path: str, is_list: bool
) -> None:
    _validate(composed)  # the default value passes
    for bad in (math.nan, math.inf, -math.inf):
        cfg = copy.deepcopy(composed)
        OmegaConf.update(cfg, path, [bad] if is_list else bad, merge=False)
        with pytest.raises(ConfigError, match=re.escape(path) + r".*must be a finite number"):
            _validate(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("arg", ["stage1.optim.lr=nan", "stage1.optim.lr=inf",
                                 "backbone.mean=[nan,0,0]", "backbone.std=[1,inf,1]",
                                 "trainer.limit_train_batches=.nan"])  # fmt: skip
def test_train_refuses_non_finite_values_before_any_work(tmp_path: Path, capsys, arg: str) -> None:
    run_dir = tmp_path / "run"
    assert train.main(["--cfg", arg]) == 2
    assert "must be a finite number" in _one_line(capsys.readouterr().err)
    assert train.main([*TINY, arg, f"run.dir={run_dir}"]) == 2
    assert "must be a finite number" in _one_line(capsys.readouterr().err)
    assert not run_dir.exists()


@pytest.mark.slow
def test_a_saved_non_finite_value_is_refused(finished: Path, tmp_path: Path) -> None:
    run_dir = _copy(finished, tmp_path)
    _edit_config(run_dir, **{"stage1.optim.lr": math.nan})
    with pytest.raises(ConfigError, match="stage1.optim.lr.*must be a finite number"):
        load_run_config(run_dir)


BAD_TRAINER = [
    ("trainer.precision=banana", "trainer.precision"),
    ("trainer.precision=8", "trainer.precision"),
    ("trainer.accelerator=quantum", "trainer.accelerator"),
    ("trainer.devices=0", "trainer.devices"),
    ("trainer.devices=-2", "trainer.devices"),
    ("trainer.devices=banana", "trainer.devices"),
    ("trainer.devices=[0,0]", "trainer.devices"),
    ("trainer.devices=[]", "trainer.devices"),
    ("trainer.devices='0,x'", "trainer.devices"),
    ("trainer.accelerator=cpu trainer.devices=-1", "trainer.devices"),
    ("trainer.accelerator=cpu trainer.devices=[0,1]", "trainer.devices"),
    ("trainer.strategy=dpp", "trainer.strategy"),
    ("trainer.num_nodes=0", "trainer.num_nodes"),
    ("trainer.limit_train_batches=1.5", "trainer.limit_train_batches"),
    ("trainer.limit_val_batches=-1", "trainer.limit_val_batches"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("arg", "key"), BAD_TRAINER, ids=[a for a, _ in BAD_TRAINER])
def test_bad_lightning_trainer_values_are_refused_before_any_run_directory(
    tmp_path: Path, capsys, arg: str, key: str
) -> None:
    run_dir = tmp_path / "run"
    assert train.main(["--cfg", *arg.split()]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("config error:") and repr(key) in line
    assert train.main([*TINY, *arg.split(), f"run.dir={run_dir}"]) == 2
    assert _one_line(capsys.readouterr().err) == line
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "arg",
    [
        "trainer.precision=16-mixed",
        "trainer.precision=bf16",
        "trainer.precision=16",
        "trainer.accelerator=gpu",
        "trainer.accelerator=cpu trainer.devices=2",
        "trainer.accelerator=cpu trainer.devices=auto",
        "trainer.devices=auto",
        "trainer.accelerator=gpu trainer.devices=-1",
        "trainer.devices=3",
        "trainer.accelerator=gpu trainer.devices=[0,1]",
        "trainer.accelerator=gpu trainer.devices='0,1'",
        "trainer.accelerator=gpu trainer.devices='1,'",
        "trainer.strategy=ddp_spawn",
        "trainer.limit_train_batches=0.25",
        "trainer.limit_val_batches=3",
    ],
)
def test_values_lightning_accepts_are_kept(arg: str) -> None:
    load_config(arg.split())


@pytest.mark.slow
def test_a_bad_precision_stops_train_before_heavy_imports(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, train; rc = train.main(sys.argv[1:]); "
            "print('heavy' if {'torch', 'lightning'} & set(sys.modules) else 'light'); "
            "sys.exit(rc)",
            *TINY,
            "trainer.precision=banana",
            f"run.dir={run_dir}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout.strip() == "light"
    assert "'trainer.precision'" in _one_line(proc.stderr) and not run_dir.exists()


def test_the_static_trainer_choices_agree_with_lightning() -> None:
    from lightning.fabric import connector
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    precisions = {
        *typing.get_args(connector._PRECISION_INPUT_STR),
        *typing.get_args(connector._PRECISION_INPUT_STR_ALIAS),
        *(str(p) for p in typing.get_args(connector._PRECISION_INPUT_INT)),
    }
    assert set(CHOICES["trainer.precision"]) == precisions
    assert set(CHOICES["trainer.strategy"]) == {"auto", *StrategyRegistry.available_strategies()}
    accelerators = {"auto", "gpu", *AcceleratorRegistry.available_accelerators()}
    assert set(CHOICES["trainer.accelerator"]) == accelerators


CPU_TRAINERS = {
    "devices=2": (True, {"devices": 2}),
    "devices=auto,bf16-mixed": (True, {"devices": "auto", "precision": "bf16-mixed"}),
    "limit_train_batches=0.25": (True, {"limit_train_batches": 0.25}),
    "devices=-1": (False, {"devices": -1}),
    "devices=[0,1]": (False, {"devices": [0, 1]}),
    "devices=0": (False, {"devices": 0}),
    "precision=banana": (False, {"precision": "banana"}),
    "strategy=dpp": (False, {"strategy": "dpp"}),
    "limit_train_batches=1.5": (False, {"limit_train_batches": 1.5}),
}


@pytest.mark.parametrize("case", list(CPU_TRAINERS))
def test_lightning_agrees_with_the_trainer_checks_on_cpu(case: str) -> None:
    import lightning

    accepted, fields = CPU_TRAINERS[case]
    args = ["trainer.accelerator=cpu", *(f"trainer.{k}={v}" for k, v in fields.items())]
    kwargs = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, **fields}
    if accepted:
        load_config([a.replace(" ", "") for a in args])
        lightning.Trainer(**kwargs)
    else:
        with pytest.raises(ConfigError):
            load_config([a.replace(" ", "") for a in args])
        with pytest.raises(Exception):  # noqa: B017 - Lightning raises several types
            lightning.Trainer(**kwargs)
