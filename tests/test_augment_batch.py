"""Batched augmentations against torchvision's per-image operations, AugMix's distribution, and
features that do not depend on how the images are batched or split into parts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TVF

import introspect.stages.heads as stage2_mod
from introspect.config import load_config
from introspect.data.augment import (
    _AUGMIX_DRAWS,
    AUGMIX_MAX_DEPTH,
    AUGMIX_OPS,
    AUGMIX_WIDTH,
    AugMixParams,
    GaussianNoise,
    apply_augmix,
    augment_batches,
    augmix_magnitude_table,
    build_batch_augmentation,
    draw_augmix_params,
    image_generators,
)
from introspect.data.images import IndexedDataset, SeededTransformDataset
from introspect.gradients.cache import FeatureCache, weights_digest
from introspect.jobs.settings import train_settings
from introspect.stages.stage1 import build_backbone, build_data

BILINEAR = InterpolationMode.BILINEAR


def _reference_op(image: torch.Tensor, op: str, magnitude: float) -> torch.Tensor:
    """One AugMix operation on one uint8 image with torchvision's public functional API, with
    the arguments torchvision's AugMix passes (fill None, bilinear)."""
    if op == "shear_x":
        shear = [math.degrees(math.atan(magnitude)), 0.0]
        return TVF.affine(image, 0.0, [0, 0], 1.0, shear, BILINEAR, None, [0, 0])
    if op == "shear_y":
        shear = [0.0, math.degrees(math.atan(magnitude))]
        return TVF.affine(image, 0.0, [0, 0], 1.0, shear, BILINEAR, None, [0, 0])
    if op == "translate_x":
        return TVF.affine(image, 0.0, [int(magnitude), 0], 1.0, [0.0, 0.0], BILINEAR, None)
    if op == "translate_y":
        return TVF.affine(image, 0.0, [0, int(magnitude)], 1.0, [0.0, 0.0], BILINEAR, None)
    if op == "rotate":
        return TVF.rotate(image, magnitude, BILINEAR, fill=None)
    if op == "posterize":
        return TVF.posterize(image, int(magnitude))
    if op == "solarize":
        return TVF.solarize(image, magnitude)
    if op == "autocontrast":
        return TVF.autocontrast(image)
    assert op == "equalize"
    return TVF.equalize(image)


def _reference_augmix(images: torch.Tensor, p: AugMixParams) -> torch.Tensor:
    """AugMix image by image with torchvision's operations and mixing (float mix, uint8 cast)."""
    out = []
    for i, image in enumerate(images):
        mix = p.skip[i] * image
        for c in range(AUGMIX_WIDTH):
            chain = image
            for s in range(int(p.depth[i, c])):
                op = AUGMIX_OPS[int(p.ops[i, c, s])]
                chain = _reference_op(chain, op, float(p.magnitudes[i, c, s]))
            mix.add_(p.weights[i, c] * chain)
        out.append(mix.to(torch.uint8))
    return torch.stack(out)


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
    images[: n // 2, :, 4:12, 6:20] = 90  # flat patches: ties for equalize/autocontrast
    images[0, 1] = 17  # a constant channel: autocontrast's degenerate case
    return images


def _single_op_params(n: int, op: int, magnitude: float) -> AugMixParams:
    """Every image through one chain of the single operation ``op``, weight 1."""
    weights = torch.zeros(n, AUGMIX_WIDTH)
    weights[:, 0] = 1.0
    shape = (n, AUGMIX_WIDTH, AUGMIX_MAX_DEPTH)
    return AugMixParams(
        skip=torch.zeros(n),
        weights=weights,
        depth=torch.ones(n, AUGMIX_WIDTH, dtype=torch.long),
        ops=torch.full(shape, op, dtype=torch.long),
        magnitudes=torch.full(shape, magnitude, dtype=torch.float64),
    )


@pytest.mark.slow
@pytest.mark.parametrize("op", AUGMIX_OPS)
def test_each_operation_alone_equals_torchvision_per_image(op: str) -> None:
    images = _images(6)
    k = AUGMIX_OPS.index(op)
    table = augmix_magnitude_table(10, (32, 32))[k]
    magnitudes = {float(m) for m in table} | {-float(m) for m in table} | {0.37}
    if op == "posterize":
        magnitudes = {float(b) for b in range(1, 9)}
    for magnitude in sorted(magnitudes):
        out = apply_augmix(images, _single_op_params(len(images), k, magnitude))
        ref = torch.stack([_reference_op(im, op, magnitude) for im in images])
        assert torch.equal(out, ref), (op, magnitude)


@pytest.mark.slow
def test_augmix_equals_the_per_image_reference_for_random_choices() -> None:
    images = _images(40, size=24)
    gen = torch.Generator().manual_seed(1)
    params = draw_augmix_params(torch.rand(40, _AUGMIX_DRAWS, generator=gen), 3, (24, 24))
    assert torch.equal(apply_augmix(images, params), _reference_augmix(images, params))


def test_augmix_is_the_identity_when_the_skip_weight_is_one() -> None:
    images = _images(8)
    gen = torch.Generator().manual_seed(2)
    uniforms = torch.rand(8, _AUGMIX_DRAWS, generator=gen)
    params = draw_augmix_params(uniforms, 3, (32, 32))
    ones = AugMixParams(
        skip=torch.ones(8),
        weights=torch.zeros(8, AUGMIX_WIDTH),
        depth=params.depth,
        ops=params.ops,
        magnitudes=params.magnitudes,
    )
    assert torch.equal(apply_augmix(images, ones), images)
    floats = images.float() / 255
    augmix = build_batch_augmentation("augmix", image_size=32)
    assert augmix is not None
    out = augmix(floats, image_generators(0, range(8)))
    assert out.dtype == torch.float32 and out.shape == floats.shape
    assert out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out * 255, (out * 255).round(), rtol=0, atol=1e-4)
    assert (out - floats).abs().amax(dim=(1, 2, 3)).min() > 2 / 255  # every image changed


def test_augmix_choices_follow_their_distributions() -> None:
    n, severity = 20000, 3
    gen = torch.Generator().manual_seed(3)
    p = draw_augmix_params(torch.rand(n, _AUGMIX_DRAWS, generator=gen), severity, (32, 32))
    torch.testing.assert_close(p.skip + p.weights.sum(1), torch.ones(n))
    assert 0 <= p.skip.min() and p.skip.max() < 1 and p.weights.min() >= 0
    # Beta(1, 1) skip weight; chain shares Dirichlet(1, 1, 1): marginal Beta(1, 2).
    assert p.skip.mean().item() == pytest.approx(0.5, abs=0.01)
    assert p.skip.var().item() == pytest.approx(1 / 12, abs=0.004)
    shares = p.weights / (1 - p.skip)[:, None]
    assert shares.mean(0).tolist() == pytest.approx([1 / 3] * 3, abs=0.01)
    assert shares.var(0).tolist() == pytest.approx([1 / 18] * 3, abs=0.004)
    depth = torch.bincount(p.depth.flatten() - 1, minlength=3).float() / p.depth.numel()
    assert depth.tolist() == pytest.approx([1 / 3] * 3, abs=0.01)
    ops = torch.bincount(p.ops.flatten(), minlength=len(AUGMIX_OPS)).float() / p.ops.numel()
    assert ops.tolist() == pytest.approx([1 / len(AUGMIX_OPS)] * len(AUGMIX_OPS), abs=0.006)
    table = augmix_magnitude_table(severity, (32, 32))
    for k, op in enumerate(AUGMIX_OPS):
        mags = p.magnitudes[p.ops == k]
        allowed = set(table[k].tolist())
        assert set(mags.abs().tolist()) <= allowed, op
        if op in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate"):
            assert (mags < 0).float().mean().item() == pytest.approx(0.5 * (1 - 1 / 3), abs=0.03)
        else:
            assert (mags >= 0).all(), op
    # Severity 3 reaches a third of torchvision's ranges: rotations up to 30 * 2/9 degrees.
    assert table[AUGMIX_OPS.index("rotate")].max().item() == pytest.approx(30 * 2 / 9)


def test_batched_noise_and_crop_flip_equal_the_seeded_per_sample_transforms() -> None:
    gen = torch.Generator().manual_seed(4)
    base = TensorDataset(torch.rand(20, 3, 16, 16, generator=gen), torch.zeros(20))
    images = base.tensors[0]
    per_sample = {
        "gaussian_noise": GaussianNoise(0.1),
        "standard": T.Compose([T.RandomCrop(16, padding=2, fill=0), T.RandomHorizontalFlip()]),
    }
    for name, transform in per_sample.items():
        batched = build_batch_augmentation(name, image_size=16, noise_std=0.1, padding=2)
        assert batched is not None
        reference = SeededTransformDataset(base, transform, seed=11)
        expected = torch.stack([reference[i][0] for i in range(20)])
        assert torch.equal(batched(images, image_generators(11, range(20))), expected), name


@pytest.mark.parametrize("name", ["augmix", "gaussian_noise", "standard"])
def test_an_image_does_not_depend_on_its_batch(name: str) -> None:
    gen = torch.Generator().manual_seed(5)
    images = torch.rand(32, 3, 16, 16, generator=gen)
    dataset = IndexedDataset(TensorDataset(images, torch.arange(32)))
    aug = build_batch_augmentation(name, image_size=16)
    assert aug is not None

    def run(batch_size: int, indices: list[int]) -> torch.Tensor:
        loader = DataLoader(Subset(dataset, indices), batch_size=batch_size)
        return torch.cat([x for x, _ in augment_batches(loader, aug, seed=9)])

    whole = run(32, list(range(32)))
    assert torch.equal(run(7, list(range(32))), whole)
    halves = torch.cat([run(5, list(range(16))), run(32, list(range(16, 32)))])
    assert torch.equal(halves, whole)
    assert not torch.equal(torch.cat([x for x, _ in augment_batches(
        DataLoader(dataset, batch_size=32), aug, seed=10)]), whole)  # fmt: skip


TINY = ["data=synthetic", "data.num_samples=120", "data.image_size=16"]


def _split_features(cfg, dm, backbone, root: Path) -> dict[str, torch.Tensor]:
    return stage2_mod.split_features(
        dm, backbone, "train", "augmix", 1, settings=train_settings(cfg).stage2,
        cache=FeatureCache(root), digest=weights_digest(backbone),
    )  # fmt: skip


@pytest.mark.slow
def test_augmix_features_do_not_depend_on_batch_size_or_on_two_halves(
    tmp_path: Path, monkeypatch
) -> None:
    cfg = load_config(TINY)
    dm = build_data(train_settings(cfg).stage1)
    backbone = build_backbone(train_settings(cfg).stage1, dm.num_classes, dm.image_shape).eval()
    features = {}
    for batch in (7, 32):
        cfg.stage2.extract_batch_size, cfg.stage2.shard_batches = batch, 1
        features[batch] = _split_features(cfg, dm, backbone, tmp_path / f"b{batch}")
    for key, value in features[32].items():
        torch.testing.assert_close(features[7][key], value, rtol=1e-5, atol=1e-6, msg=key)
    # Two processes: the second extracts its block of shards (block_bounds) and stops where
    # it would wait for the first, which then extracts only the shards still missing.
    cfg.stage2.extract_batch_size = 16
    root = tmp_path / "halves"
    shards = math.ceil(len(dm.split("train")) / 16)

    class Stop(Exception):
        pass

    def stop() -> None:
        raise Stop

    monkeypatch.setattr(stage2_mod, "global_rank", lambda: 1)
    monkeypatch.setattr(stage2_mod, "world_size", lambda: 2)
    monkeypatch.setattr(stage2_mod, "barrier", stop)
    with pytest.raises(Stop):
        _split_features(cfg, dm, backbone, root)
    monkeypatch.undo()
    entry = next(p for p in root.iterdir() if p.is_dir())
    assert len(list(entry.glob("shard-*.pt"))) == shards - shards // 2
    halves = _split_features(cfg, dm, backbone, root)
    for key, value in features[32].items():
        torch.testing.assert_close(halves[key], value, rtol=1e-5, atol=1e-6, msg=key)
