"""Config composition and validation: every bad input stops with one message naming the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from introspect.config import ConfigError, load_config
from introspect.config.schema import CHOICES, GROUPS

REPO = Path(__file__).resolve().parents[1]

CONFIGS = REPO / "configs"


def test_defaults_compose_the_digits_job() -> None:
    cfg = load_config([])
    assert cfg.data.source == "digits"
    assert cfg.backbone.name == "small_cnn"
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.experiment is None


def test_group_choice_and_dotlist_override() -> None:
    cfg = load_config(["data=synthetic", "data.batch_size=7", "stage1.optim.lr=0.5"])
    assert cfg.data.source == "synthetic"
    assert cfg.data.batch_size == 7
    assert cfg.stage1.optim.lr == 0.5


@pytest.mark.slow
def test_every_shipped_group_option_and_experiment_validates() -> None:
    for group in GROUPS:
        options = sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))
        assert options, f"configs/{group}/ is empty"
        for option in options:
            node = OmegaConf.load(CONFIGS / group / f"{option}.yaml")
            fill = [f"{group}.{k}=x" for k in node if OmegaConf.is_missing(node, k)]
            if group == "backbone" and option == "custom":
                fill = ["backbone.name=pkg.mod:Net", "backbone.mean=[0]", "backbone.std=[1]"]
            load_config([f"{group}={option}", *fill])
    experiments = sorted((CONFIGS / "experiment").glob("*.yaml"))
    assert experiments, "configs/experiment/ is empty"
    for path in experiments:
        cfg = load_config([f"experiment={path.stem}"])
        assert cfg.experiment == path.stem


def test_experiment_sets_group_defaults_and_keys(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "experiment").mkdir()
    (tmp_path / "config.yaml").write_text("defaults:\n  data: a\nrun:\n  seed: 1\n")
    (tmp_path / "data" / "a.yaml").write_text("source: digits\nbatch_size: 3\n")
    (tmp_path / "data" / "b.yaml").write_text("source: synthetic\nbatch_size: 5\n")
    (tmp_path / "experiment" / "e.yaml").write_text(
        "defaults:\n  data: b\nrun:\n  seed: 7\ndata:\n  num_samples: 99\n"
    )
    cfg = load_config(["experiment=e"], config_dir=tmp_path)
    assert (cfg.data.source, cfg.data.batch_size, cfg.data.num_samples) == ("synthetic", 5, 99)
    assert cfg.run.seed == 7 and cfg.experiment == "e"
    # command line beats the experiment, for group choices and for keys
    cfg = load_config(["experiment=e", "data=a", "run.seed=3"], config_dir=tmp_path)
    assert (cfg.data.source, cfg.run.seed, cfg.data.num_samples) == ("digits", 3, 99)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["data.batchsize=3"], ["'data.batchsize'", "batch_size", "Did you mean"]),
        (["stage1.optim.lrr=1"], ["'stage1.optim.lrr'", "Did you mean 'lr'"]),
        (["bogus=1"], ["bogus", "data", "backbone"]),
        (["data.batch_size=abc"], ["'data.batch_size'", "abc"]),
        (["data.val_fraction=[1,2]"], ["'data.val_fraction'"]),
        (["data=digitz"], ["unknown data option 'digitz'", "Did you mean 'digits'"]),
        (["experiment=nope"], ["unknown experiment 'nope'"]),
        (["stage1.optim.name=adam"], ["'stage1.optim.name'", "adamw", "sgd"]),
        (["data.source=mnist"], ["'data.source'", "cifar10", "digits"]),
        (["data=npz"], ["missing required", "data.path"]),
        (
            ["backbone=custom"],
            ["missing required", "backbone.mean", "backbone.name", "backbone.std"],
        ),
        (["justaword"], ["key=value"]),
    ],
)
def test_bad_input_is_one_clear_error(args: list[str], expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(args)
    message = str(info.value)
    for fragment in expected:
        assert fragment in message, message


def test_required_value_given_later_is_accepted() -> None:
    cfg = load_config(["data=npz", "data.path=/tmp/x.npz"])
    assert cfg.data.path == "/tmp/x.npz"


def test_unknown_key_in_a_group_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "config.yaml").write_text("defaults:\n  data: bad\n")
    (tmp_path / "data" / "bad.yaml").write_text("source: digits\nbatch_sise: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'data\.batch_sise'.*batch_size"):
        load_config([], config_dir=tmp_path)


def test_choices_table_matches_schema_defaults() -> None:
    cfg = load_config([])
    for path, valid in CHOICES.items():
        value = OmegaConf.select(cfg, path)
        values = list(value) if OmegaConf.is_list(value) else [value]
        assert values and all(v in valid for v in values), path


@pytest.mark.slow
@pytest.mark.parametrize("net", ["resnet20", "resnet56"])
def test_full_training_set_experiments_point_at_the_shared_data(
    net: str, shared_data: Path, monkeypatch
) -> None:
    import numpy as np

    from introspect.data.imagefolder import _split_archive_path
    from introspect.data.module import DataSettings, split_indices

    monkeypatch.setenv("INTROSPECT_SHARED_DATA", str(shared_data))
    for recipe in ([], ["stage2.augment=none"]):
        cfg = load_config([f"experiment=cifar10_full_{net}", *recipe])
        assert cfg.stage2.augment == ("none" if recipe else "augmix")
    assert (cfg.stage2.passes, cfg.stage2.include_clean, cfg.stage2.splits) == (2, True, ["train"])
    settings = DataSettings.from_config(cfg.data)
    assert settings.source == "imagefolder" and settings.decode and settings.val_from == "test"
    archive, inner = _split_archive_path(Path(settings.path))
    assert archive == shared_data / "cifar10-jpeg-q75.tar.gz" and inner == Path("train")
    assert cfg.eval.extra.jpeg_q75.path == str(archive) and cfg.eval.extra.jpeg_q75.split == "test"
    with np.load(settings.test_path, allow_pickle=False) as npz:
        labels = npz["y"]
    test, calibration = split_indices(labels, settings.val_fraction, settings.split_seed, "t")
    assert (len(labels), len(calibration), len(test)) == (1017, 509, 508)
    assert len(cfg.eval.corruptions) == 15 and list(cfg.eval.severities) == [1, 2, 3, 4, 5]
    checkpoint = Path(cfg.backbone.checkpoint)
    assert checkpoint.is_file() and checkpoint.name.startswith(net)
    assert cfg.backbone.name == f"cifar_{net}"
