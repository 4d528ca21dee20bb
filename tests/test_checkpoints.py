"""Checkpoint files: every supported format round-trips, every bad file fails clearly."""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from introspect.backbones import (
    Backbone,
    CheckpointError,
    load_backbone,
    load_state_dict_file,
)
from introspect.backbones.checkpoint import find_prefix


@pytest.fixture
def trained() -> Backbone:
    """A small_cnn with random weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    b = load_backbone("small_cnn")
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.1 * torch.randn_like(p))
        b.train()
        b(3 * torch.rand(16, 3, 8, 8))
    return b.eval()


def assert_same_weights(loaded: Backbone, reference: Backbone, counters: bool = True) -> None:
    """Equal tensors (BatchNorm's ``num_batches_tracked`` only if ``counters``), equal logits."""
    own, ref = loaded.net.state_dict(), reference.net.state_dict()
    assert own.keys() == ref.keys()
    for key in ref:
        if not counters and key.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(own[key], ref[key], rtol=0, atol=0)
    x = torch.rand(5, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), reference(x))


def net_state(b: Backbone) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in b.net.state_dict().items()}


FORMATS = {
    "raw": lambda b: net_state(b),
    "state_dict_entry": lambda b: {"state_dict": net_state(b), "epoch": 7, "best_prec1": 91.0},
    "module_prefix": lambda b: {
        "state_dict": {f"module.{k}": v for k, v in net_state(b).items()},
        "best_prec1": 91.0,
    },
    "raw_module_prefix": lambda b: {f"module.{k}": v for k, v in net_state(b).items()},
    "whole_backbone": lambda b: dict(b.state_dict()),
    "lightning_style": lambda b: {
        "state_dict": {f"backbone.{k}": v for k, v in b.state_dict().items()},
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
    },
    "no_num_batches_tracked": lambda b: {
        k: v for k, v in net_state(b).items() if not k.endswith("num_batches_tracked")
    },
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_round_trip(fmt: str, trained: Backbone, tmp_path: Path) -> None:
    path = tmp_path / f"{fmt}.pt"
    torch.save(FORMATS[fmt](trained), path)
    counters = fmt != "no_num_batches_tracked"  # old files lack them; they restart at 0
    assert_same_weights(load_backbone("small_cnn", path), trained, counters)


def test_whole_pickled_module_needs_trust(trained: Backbone, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(trained.net, path)
    with pytest.raises(CheckpointError, match="trust_checkpoint=true"):
        load_backbone("small_cnn", path)
    assert_same_weights(load_backbone("small_cnn", path, trust_checkpoint=True), trained)


def test_pickled_object_needs_trust(trained: Backbone, tmp_path: Path) -> None:
    path = tmp_path / "legacy.pth"
    torch.save({"state_dict": net_state(trained), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects.*trust_checkpoint=true"):
        load_state_dict_file(path)
    assert_same_weights(load_backbone("small_cnn", str(path), trust_checkpoint=True), trained)


class _Stage1(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = load_backbone("small_cnn", mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.backbone(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)


def test_real_lightning_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = _Stage1()
    initial = net_state(module.backbone)
    data = TensorDataset(torch.rand(16, 3, 8, 8), torch.randint(0, 10, (16,)))
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(data, batch_size=8))
    path = tmp_path / "stage1.ckpt"
    trainer.save_checkpoint(path)
    trained = module.backbone.eval()
    assert not torch.equal(
        trained.net.state_dict()["classifier.weight"], initial["classifier.weight"]
    )

    loaded = load_backbone("small_cnn", path, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
    assert_same_weights(loaded, trained)
    with pytest.raises(CheckpointError, match=r"normalize.mean=\[0.4"):
        load_backbone("small_cnn", path)  # default mean/std differ from the saved ones


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_backbone("small_cnn", tmp_path / "nope.ckpt")


def test_unreadable_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_state_dict_file(garbage)
    not_state = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], not_state)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_state_dict_file(not_state)
    mixed = tmp_path / "mixed.pt"
    torch.save({"weight": torch.zeros(2), "epoch": 3}, mixed)
    with pytest.raises(CheckpointError, match=r"\['epoch'\] are not tensors"):
        load_state_dict_file(mixed)


def test_mismatched_keys_are_listed(trained: Backbone, tmp_path: Path) -> None:
    state = net_state(trained)
    state["classifier.kernel"] = state.pop("classifier.weight")
    del state["features.0.1.running_var"]
    path = tmp_path / "renamed.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    with pytest.raises(CheckpointError) as info:
        load_backbone("small_cnn", path)
    message = str(info.value)
    assert "2 missing keys: features.0.1.running_var, classifier.weight" in message
    assert "1 unexpected keys: module.classifier.kernel" in message
    assert "'module.'" in message


def test_mismatched_shapes_are_listed(tmp_path: Path) -> None:
    narrow = load_backbone("small_cnn", num_classes=4, kwargs={"width": 16})
    path = tmp_path / "narrow.pt"
    torch.save(narrow.net.state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        load_backbone("small_cnn", path, num_classes=10)
    message = str(info.value)
    assert "features.0.0.weight: checkpoint (16, 3, 3, 3) vs model (32, 3, 3, 3)" in message
    assert "and" in message and "more" in message  # more offenders than listed
    assert "missing" not in message and "unexpected" not in message


def test_wrong_class_count_checkpoint(trained: Backbone, tmp_path: Path) -> None:
    path = tmp_path / "ten.pt"
    torch.save(net_state(trained), path)
    with pytest.raises(CheckpointError, match=r"classifier.weight: checkpoint \(10, 64\) vs model"):
        load_backbone("small_cnn", path, num_classes=3)


def test_unrelated_extra_module_is_unexpected(trained: Backbone, tmp_path: Path) -> None:
    state = {f"backbone.{k}": v for k, v in trained.state_dict().items()}
    state["probe.weight"] = torch.zeros(2, 2)
    path = tmp_path / "extra.ckpt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match="1 unexpected keys: probe.weight"):
        load_backbone("small_cnn", path)


def test_find_prefix() -> None:
    model = ["conv.weight", "fc.weight", "fc.bias"]
    assert find_prefix(["conv.weight", "fc.weight"], model) == ""
    assert find_prefix(["a.b.conv.weight", "a.b.fc.bias", "x.fc.weight"], model) == "a.b."
    # the counts tie; the shortest prefix wins
    assert find_prefix(["m.fc.weight", "mm.m.fc.bias"], model) == "m."
    assert find_prefix(["head.kernel"], model) == ""
