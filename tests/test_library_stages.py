"""Stage 2 and evaluation as library calls: ``fit_heads`` and ``evaluate`` on plain DataLoaders,
checked against autograd, numpy, scipy and the CLI's own stage 2."""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from torch.utils.data import DataLoader

from introspect.config import load_config
from introspect.jobs.settings import train_settings
from introspect.runs.trainer import build_trainer
from introspect.stages.evaluation import EvaluationResult, evaluate, format_table
from introspect.stages.heads import fit_heads, loader_features, stage2
from introspect.stages.options import FeatureOptions, HeadRecipe
from introspect.stages.stage1 import build_backbone, build_data

TINY = [
    "data=synthetic",
    "data.num_samples=160",
    "data.image_size=8",
    "stage2.head.epochs=2",
    "stage2.head.hidden=[32,16]",
    "stage2.extract_batch_size=32",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
]
RECIPE = HeadRecipe(hidden=(32, 16), epochs=2, batch_size=16)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Config, data module, a (random, frozen) backbone and plain loaders of its splits."""
    tmp = tmp_path_factory.mktemp("lib")
    cfg = load_config([*TINY, f"run.dir={tmp / 'run'}", f"stage2.cache_dir={tmp / 'cache'}"])
    L.seed_everything(0, verbose=False)
    dm = build_data(train_settings(cfg).stage1)
    backbone = build_backbone(train_settings(cfg).stage1, dm.num_classes, dm.image_shape).eval()
    loaders = {s: DataLoader(dm.split(s), batch_size=32) for s in ("train", "val", "test")}
    return cfg, dm, backbone, loaders


@pytest.fixture(scope="module")
def fitted(parts):
    _, _, backbone, loaders = parts
    return fit_heads(backbone, loaders["train"], loaders["val"], head=RECIPE, seed=3)


def _stack(loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def _autograd_features(backbone: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Per image: the gradient of CE(logits, all-ones label) w.r.t. the last Linear's weight,
    flattened and scaled to unit L2 norm (the default feature)."""
    backbone = copy.deepcopy(backbone).requires_grad_(True)  # fit_heads froze the original
    rows = []
    for x in images:
        logits = backbone(x[None])
        loss = -F.log_softmax(logits, dim=-1).sum()  # every class is the target, weight 1
        (grad,) = torch.autograd.grad(loss, backbone.head.weight)
        rows.append(grad.flatten())
    feats = torch.stack(rows)
    return feats / feats.norm(dim=1, keepdim=True)


def test_fitted_heads_see_the_autograd_features(parts, fitted) -> None:
    _, _, backbone, loaders = parts
    images, labels = _stack(loaders["test"])
    reference = _autograd_features(backbone, images[:12])
    intro = fitted.heads["introspective"]
    torch.testing.assert_close(intro.features(images[:12]), reference, rtol=1e-4, atol=1e-6)
    # What fit_heads trains on: the cached factors, materialized and normalized the same way.
    cached = loader_features(backbone, loaders["test"], features=FeatureOptions())
    assert torch.equal(cached["labels"], labels)
    outer = torch.einsum("bn,bd->bnd", cached["grad"][:12], cached["penult"][:12]).flatten(1)
    torch.testing.assert_close(
        outer / outer.norm(dim=1, keepdim=True), reference, rtol=1e-4, atol=1e-6
    )
    assert set(fitted.heads) == {"introspective", "control", "control_hp"}


def test_temperatures_minimize_the_validation_nll(parts, fitted) -> None:
    _, _, backbone, loaders = parts
    images, labels = _stack(loaders["val"])
    with torch.no_grad():
        logits = {"feedforward": backbone(images), "control": fitted.heads["control"](images)}
    logits["introspective"] = fitted.heads["introspective"](images).detach()
    assert set(fitted.temperatures) == {"feedforward", "introspective", "control", "control_hp"}
    for name, z in logits.items():
        z = z.double()

        def nll(log_t: float, z: torch.Tensor = z) -> float:
            return F.cross_entropy(z / np.exp(log_t), labels).item()

        best = minimize_scalar(nll, bounds=(np.log(0.05), np.log(100)), method="bounded")
        # At least as low an NLL as scipy's bounded search (flat optima: T may differ).
        assert nll(np.log(fitted.temperatures[name])) <= best.fun + 1e-9, name


def _ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    conf, pred = probs.max(1), probs.argmax(1)
    which = np.clip(np.ceil(conf * bins) - 1, 0, bins - 1).astype(int)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() * abs((pred[mask] == labels[mask]).mean() - conf[mask].mean())
    return total / len(labels)


def test_evaluate_matches_a_direct_numpy_computation(parts, fitted) -> None:
    _, _, backbone, loaders = parts
    result = evaluate(fitted, {"clean": loaders["test"]})
    assert isinstance(result, EvaluationResult)
    images, labels = _stack(loaders["test"])
    y = labels.numpy()
    logits = {"feedforward": backbone(images).detach()}
    for name, head in fitted.heads.items():
        logits[name] = head(images).detach()
    for name, t in fitted.temperatures.items():
        logits[f"{name}_ts"] = logits[name] / t
    entry = result.splits["clean"]
    assert entry["num_samples"] == len(y)
    assert set(entry) - {"num_samples"} == set(logits)
    for name, z in logits.items():
        probs = z.softmax(-1).double().numpy()
        assert entry[name]["acc"] == pytest.approx((probs.argmax(1) == y).mean(), abs=1e-9)
        assert entry[name]["ece"] == pytest.approx(_ece(probs, y), abs=1e-5), name
        nll = -np.log(probs[np.arange(len(y)), y]).mean()
        assert entry[name]["nll"] == pytest.approx(nll, rel=1e-4), name
    # It prints as the CLI's table; predict gives the same logits.
    assert str(result) == result.table() == format_table(result.as_dict())
    assert f"| clean | {len(y)} |" in result.table()
    predicted = fitted.predict(loaders["test"])
    assert torch.equal(predicted["labels"], labels)
    torch.testing.assert_close(predicted["introspective_ts"], logits["introspective_ts"])


def test_evaluate_under_a_trainer_in_inference_mode(parts, fitted) -> None:
    _, _, _, loaders = parts
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, inference_mode=True
    )
    cells = {"clean": loaders["test"], "noise/1": loaders["val"]}
    inferred = evaluate(fitted, cells, trainer=trainer)
    plain = evaluate(fitted, cells)
    assert inferred.splits == plain.splits
    assert inferred.summary() == {h: plain.splits["noise/1"][h] for h in inferred.summary()}


def test_the_cli_stage_two_and_fit_heads_train_the_same_weights(parts, tmp_path: Path) -> None:
    cfg, dm, backbone, loaders = parts
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    trainer = partial(build_trainer, train_settings(cfg).job.trainer, run_dir, loggers=[])
    cli = stage2(train_settings(cfg).stage2, dm, backbone, run_dir, trainer)
    library = fit_heads(
        backbone,
        loaders["train"],
        loaders["val"],
        head=train_settings(cfg).stage2.head,
        features=train_settings(cfg).stage2.features,
        seed=cfg.run.seed,
        cache=tmp_path / "library-cache",
        cache_tag="synthetic",
    )
    assert set(cli) == set(library.heads) == {"introspective", "control", "control_hp"}
    for kind, head in cli.items():
        ours, theirs = head.head_state(), library.heads[kind].head_state()
        assert ours.keys() == theirs.keys()
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6, msg=key)
    # A second fit reads its features from the cache: same heads again.
    again = fit_heads(
        backbone, loaders["train"], loaders["val"], head=train_settings(cfg).stage2.head,
        features=train_settings(cfg).stage2.features, seed=cfg.run.seed,
        cache=tmp_path / "library-cache",
        cache_tag="synthetic",
    )  # fmt: skip
    for kind, head in again.heads.items():
        for key, value in head.head_state().items():
            assert torch.equal(value, library.heads[kind].head_state()[key]), key


def test_fit_heads_on_a_raw_torchvision_model_matches_autograd() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    images, labels = torch.rand(32, 3, 32, 32), torch.arange(32) % 10
    loader = DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=16)
    # Reference: per image, autograd of CE(logits, all-ones label) w.r.t. fc.weight, L2-scaled.
    rows = []
    for x in images[:6]:
        loss = -F.log_softmax(model(x[None]), dim=-1).sum()
        (grad,) = torch.autograd.grad(loss, model.fc.weight)
        rows.append(grad.flatten())
    reference = torch.stack(rows)
    reference = reference / reference.norm(dim=1, keepdim=True)
    recipe = HeadRecipe(hidden=(16,), epochs=1, batch_size=16)
    for layer in (None, "fc"):
        fitted = fit_heads(copy.deepcopy(model), loader, head=recipe, layer=layer)
        assert fitted.backbone.head_path == "net.fc"
        intro = fitted.heads["introspective"]
        torch.testing.assert_close(intro.features(images[:6]), reference, rtol=1e-4, atol=1e-6)
        assert set(fitted.temperatures) == set()  # no val loader: nothing calibrated
