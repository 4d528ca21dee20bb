"""The control head on [h, p] (``control_hp``): its inputs against the backbone computed
independently, its recipe and seed shared with the control, its place in the table and the
paired differences, and runs finished before it existed."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from introspect.config import load_config
from introspect.gradients.cache import FeatureCache
from introspect.jobs.settings import train_settings
from introspect.models.stage2 import KINDS
from introspect.report.differences import confidence_key, head_differences
from introspect.runs.trainer import build_trainer
from introspect.stages.evaluation import evaluate
from introspect.stages.heads import fit_heads, head_inputs, load_heads, loader_features, stage2
from introspect.stages.options import FeatureOptions, HeadRecipe
from introspect.stages.stage1 import build_backbone, build_data

TINY = [
    "data=synthetic",
    "data.num_samples=160",
    "data.image_size=8",
    "stage2.head.epochs=2",
    "stage2.head.hidden=[16]",
    "stage2.head.batch_size=16",
    "stage2.extract_batch_size=32",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
]
RECIPE = HeadRecipe(hidden=(16,), epochs=2, batch_size=16)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Config, data module, a (random, frozen) backbone, plain loaders and cached features."""
    tmp = tmp_path_factory.mktemp("hp")
    cfg = load_config([*TINY, f"run.dir={tmp / 'run'}", f"stage2.cache_dir={tmp / 'cache'}"])
    L.seed_everything(0, verbose=False)
    options = train_settings(cfg).stage1
    dm = build_data(options)
    backbone = build_backbone(options, dm.num_classes, dm.image_shape).eval()
    loaders = {s: DataLoader(dm.split(s), batch_size=32) for s in ("train", "val", "test")}
    cache = FeatureCache(tmp / "lib-cache")
    feats = {
        s: loader_features(backbone, loaders[s], features=FeatureOptions(), cache=cache, tag=s)
        for s in ("train", "val")
    }
    return cfg, dm, backbone, loaders, feats, tmp


@pytest.fixture(scope="module")
def fitted(parts):
    _, _, backbone, loaders, feats, _ = parts
    return fit_heads(backbone, feats["train"], feats["val"], head=RECIPE, seed=3)


def _reference_inputs(backbone: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """[h / ||h||, softmax(logits)] from a forward hook on the last linear layer."""
    seen: list[torch.Tensor] = []
    hook = backbone.head.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    with torch.no_grad():
        logits = backbone(images)
    hook.remove()
    (h,) = seen
    return torch.cat([h / h.norm(dim=1, keepdim=True), torch.softmax(logits, dim=1)], dim=1)


def test_inputs_are_normalized_h_then_the_softmax_output(parts, fitted) -> None:
    _, dm, backbone, loaders, feats, _ = parts
    images = torch.cat([x for x, _ in loaders["train"]])
    reference = _reference_inputs(backbone, images)
    # What stage 2 trains on (from the cached penultimate activations) and what the head
    # computes from images at test time.
    trained_on = head_inputs(
        "control_hp", feats["train"], dm.num_classes, FeatureOptions(), backbone
    )
    torch.testing.assert_close(trained_on, reference, rtol=1e-5, atol=1e-6)
    head = fitted.heads["control_hp"]
    torch.testing.assert_close(head.features(images), reference, rtol=1e-5, atol=1e-6)
    assert head.head[0].in_features == reference.shape[1]
    # The control's input is the first block.
    control = head_inputs("control", feats["train"], dm.num_classes, FeatureOptions())
    torch.testing.assert_close(control, reference[:, : control.shape[1]], rtol=1e-5, atol=1e-6)


def test_same_recipe_and_seed_as_the_control(parts, fitted) -> None:
    _, _, backbone, _, feats, _ = parts
    assert list(fitted.heads) == list(KINDS)
    control, hp = fitted.heads["control"], fitted.heads["control_hp"]
    assert hp.optim == control.optim and hp.normalize == control.normalize
    hidden = [m.out_features for m in hp.head if isinstance(m, torch.nn.Linear)]
    assert hidden == [m.out_features for m in control.head if isinstance(m, torch.nn.Linear)]
    # Each head ends with the weights training it alone from the same seed gives: adding the
    # third head changes neither the control nor itself.
    alone = {
        kind: fit_heads(
            backbone, feats["train"], feats["val"], head=RECIPE, seed=3, kinds=[kind]
        ).heads[kind]
        for kind in ("control", "control_hp")
    }
    for kind, model in alone.items():
        together = fitted.heads[kind].head_state()
        for key, value in model.head_state().items():
            torch.testing.assert_close(together[key], value, rtol=0, atol=0, msg=key)


def test_in_the_table_and_the_paired_differences(parts, fitted) -> None:
    _, _, _, loaders, _, _ = parts
    result = evaluate(fitted, {"clean": loaders["test"]})
    header = result.table().splitlines()[0]
    assert "| acc CTL(h,p) |" in header and "| ece CTL(h,p) |" in header
    per_image = result.per_image["clean"]
    assert per_image["control_hp"].mean() == pytest.approx(
        result.splits["clean"]["control_hp"]["acc"], abs=1e-7
    )
    block = head_differences(result.per_image)["clean"]["introspective-control_hp"]
    entry = result.splits["clean"]
    assert block["acc"]["estimate"] == pytest.approx(
        entry["introspective"]["acc"] - entry["control_hp"]["acc"], abs=1e-9
    )
    # The ECE difference of the per-image confidences is the one torchmetrics accumulated.
    assert block["ece"]["estimate"] == pytest.approx(
        entry["introspective"]["ece"] - entry["control_hp"]["ece"], abs=1e-6
    )
    assert block["ece"]["low"] <= block["ece"]["estimate"] <= block["ece"]["high"]
    assert confidence_key("control_hp") in per_image


def test_switch_and_runs_without_the_head(parts, fitted) -> None:
    cfg, dm, backbone, _, _, tmp = parts
    off = load_config([*TINY, f"run.dir={tmp / 'off'}", f"stage2.cache_dir={tmp / 'cache'}",
                       "stage2.control_hp=false"])  # fmt: skip
    settings = train_settings(off).stage2
    assert not settings.control_hp and train_settings(cfg).stage2.control_hp
    run_dir = tmp / "off"
    run_dir.mkdir()
    heads = stage2(
        settings,
        dm,
        backbone,
        run_dir,
        partial(build_trainer, train_settings(off).job.trainer, run_dir),
    )
    assert list(heads) == ["introspective", "control"]
    assert sorted(p.name for p in (run_dir / "stage2").iterdir()) == [
        "control.pt",
        "introspective.pt",
    ]
    # A run finished without the head loads (and so re-evaluates) with the heads it has.
    loaded = load_heads(backbone, run_dir, dm.num_classes, head=settings.head,
                        features=settings.features)  # fmt: skip
    assert list(loaded) == ["introspective", "control"]


def test_unknown_kind_is_refused(parts) -> None:
    _, _, backbone, _, feats, _ = parts
    with pytest.raises(ValueError, match="unknown stage-2 head kinds"):
        fit_heads(backbone, feats["train"], kinds=["control_h"])


def test_missing_backbone_is_refused(parts) -> None:
    _, _, _, _, feats, _ = parts
    with pytest.raises(ValueError, match="need the backbone"):
        head_inputs("control_hp", feats["train"], 10, FeatureOptions())
