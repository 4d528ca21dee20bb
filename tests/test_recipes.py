"""Stage-1 recipes of Table 1: NT-Xent and SimCLR views, the feature-denoising block, the
recipe selector, and every recipe trained on digits for a few steps."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from introspect.backbones.cifar_resnet import CifarResNet
from introspect.backbones.denoising import DenoisingBlock, add_denoising_blocks, non_local_means
from introspect.config import ConfigError, load_config
from introspect.data.augment import crop_flip, standard_padding
from introspect.data.device import DeviceBatches
from introspect.data.views import SimCLRAugment, TwoViews
from introspect.jobs.settings import train_settings
from introspect.models.contrastive import SimCLRPretraining, nt_xent
from introspect.models.feedforward import jsd_consistency
from introspect.runs.errors import PipelineError
from introspect.stages.contrastive import pretrain_contrastive
from introspect.stages.recipes import RECIPES, resolve_recipe
from introspect.stages.stage1 import build_backbone, build_data, stage1


def _nt_xent_loop(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """Reference: anchor by anchor, log-softmax of its positive among the 2B - 2 negatives
    and the positive, cosine similarities computed pair by pair."""
    z = torch.cat([z1, z2])
    n, b = len(z), len(z1)
    total = torch.zeros((), dtype=z.dtype)
    for i in range(n):
        pos = (i + b) % n
        sims = {
            k: torch.dot(z[i], z[k]) / (z[i].norm() * z[k].norm()) / tau for k in range(n) if k != i
        }
        log_den = torch.logsumexp(torch.stack(list(sims.values())), 0)
        total = total - (sims[pos] - log_den)
    return total / n


def test_nt_xent_matches_pairwise_loop() -> None:
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(5, 7, generator=g, dtype=torch.float64)
    z2 = z1 + 0.5 * torch.randn(5, 7, generator=g, dtype=torch.float64)
    for tau in (0.1, 0.5, 1.0):
        torch.testing.assert_close(nt_xent(z1, z2, tau), _nt_xent_loop(z1, z2, tau))


def test_nt_xent_closed_forms() -> None:
    # all 2B embeddings equal: every candidate ties, loss = log(2B - 1)
    z = torch.ones(4, 3, dtype=torch.float64)
    torch.testing.assert_close(nt_xent(z, z, 0.3), torch.tensor(math.log(7), dtype=torch.float64))
    # pairs on orthogonal axes: positive similarity 1, the 2 others 0
    e = torch.eye(2, dtype=torch.float64)
    tau = 0.5
    want = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 2))
    torch.testing.assert_close(nt_xent(e, 3 * e, tau), torch.tensor(want, dtype=torch.float64))


def test_simclr_views_are_seeded_per_image() -> None:
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    aug = SimCLRAugment()
    a = aug(image, torch.Generator().manual_seed(5))
    b = aug(image, torch.Generator().manual_seed(5))
    c = aug(image, torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == image.shape and a.min() >= 0 and a.max() <= 1
    # the draws of image i come from its generator only: batch order does not matter
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    fwd = [aug(images[i], torch.Generator().manual_seed(10 + i)) for i in range(4)]
    rev = [aug(images[i], torch.Generator().manual_seed(10 + i)) for i in reversed(range(4))]
    assert all(torch.equal(f, r) for f, r in zip(fwd, reversed(rev), strict=True))
    # the two views of an item are different draws
    torch.manual_seed(0)
    v1, v2 = TwoViews([(image, 0)], aug)[0]
    assert not torch.equal(v1, v2)


def _nlm_loop(x: torch.Tensor, theta: torch.Tensor, phi: torch.Tensor, op: str) -> torch.Tensor:
    b, c, h, w = x.shape
    n = h * w
    out = torch.zeros_like(x)
    for k in range(b):
        xs = [x[k, :, i // w, i % w] for i in range(n)]
        ts = [theta[k, :, i // w, i % w] for i in range(n)]
        ps = [phi[k, :, i // w, i % w] for i in range(n)]
        for i in range(n):
            scores = [float(torch.dot(ts[i], ps[j])) for j in range(n)]
            if op == "gaussian":
                e = [math.exp(s / math.sqrt(theta.shape[1])) for s in scores]
                weights = [v / sum(e) for v in e]
            else:
                weights = [s / n for s in scores]
            out[k, :, i // w, i % w] = sum(wt * xj for wt, xj in zip(weights, xs, strict=True))
    return out


@pytest.mark.parametrize("op", ["gaussian", "dot"])
def test_non_local_means_matches_hand_computation(op: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 2, 3, generator=g, dtype=torch.float64)
    theta = torch.randn(2, 2, 2, 3, generator=g, dtype=torch.float64)
    phi = torch.randn(2, 2, 2, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(non_local_means(x, theta, phi, op), _nlm_loop(x, theta, phi, op))


def test_denoising_block_is_identity_at_init_and_learns() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 3)
    for embed in (True, False):
        block = DenoisingBlock(4, "gaussian", embed=embed)
        assert torch.equal(block(x), x)
    block = DenoisingBlock(4, "dot", embed=False).double().eval()
    xd = x.double()
    with torch.no_grad():
        block.conv.weight.copy_(torch.eye(4, dtype=torch.float64)[:, :, None, None])
        block.bn.weight.fill_(2.0)
        block.bn.bias.fill_(0.5)
        block.bn.running_mean.fill_(0.25)
        block.bn.running_var.fill_(4.0)
    nlm = _nlm_loop(xd, xd, xd, "dot")  # the 1x1 conv is the identity here
    want = xd + 2.0 * (nlm - 0.25) / (4.0 + block.bn.eps) ** 0.5 + 0.5
    torch.testing.assert_close(block(xd), want)
    # the zero BN scale gets a gradient, so the block can learn
    block = DenoisingBlock(4)
    block(x).pow(2).sum().backward()
    assert block.bn.weight.grad is not None and block.bn.weight.grad.abs().sum() > 0


def test_denoising_blocks_keep_the_resnet_and_its_parameter_names() -> None:
    torch.manual_seed(0)
    net = CifarResNet(20).eval()
    x = torch.rand(2, 3, 32, 32)
    before, state = net(x), {k: v.clone() for k, v in net.state_dict().items()}
    assert add_denoising_blocks(net, torch.zeros(1, 3, 32, 32)) == ["layer1", "layer2", "layer3"]
    torch.testing.assert_close(net(x), before)  # identity at init
    new = net.state_dict()
    assert set(state) < set(new)
    assert {k.split(".denoise.")[0] for k in set(new) - set(state)} == {
        "layer1",
        "layer2",
        "layer3",
    }
    assert [net.layer1.denoise.conv.in_channels, net.layer3.denoise.conv.in_channels] == [16, 64]
    other = CifarResNet(20)
    assert add_denoising_blocks(other, torch.zeros(1, 3, 8, 8), stages=["layer3"]) == ["layer3"]
    assert hasattr(other.layer3, "denoise") and not hasattr(other.layer1, "denoise")
    with pytest.raises(ValueError, match="valid: layer1, layer2, layer3"):
        add_denoising_blocks(CifarResNet(20), torch.zeros(1, 3, 8, 8), stages=["layer4"])
    with pytest.raises(ValueError, match="layer<k>"):
        add_denoising_blocks(torch.nn.Sequential(torch.nn.Flatten()), torch.zeros(1, 3, 4, 4))


def test_recipe_selector() -> None:
    assert resolve_recipe("custom", "augmix", True).augment == ("augmix",)
    assert resolve_recipe("custom", "none", False).augment == ()
    assert resolve_recipe("noise", "none", False).augment == ("standard", "gaussian_noise")
    assert resolve_recipe("denoising", "none", True).denoise
    with pytest.raises(PipelineError, match="valid: custom, standard, noise, augmix"):
        resolve_recipe("simclrr", "none", False)
    with pytest.raises(PipelineError, match="remove stage1.augment=augmix"):
        resolve_recipe("standard", "augmix", False)
    with pytest.raises(PipelineError, match="adversarial.enabled"):
        resolve_recipe("simclr", "none", True)
    with pytest.raises(ConfigError, match="stage1.recipe"):
        load_config(["stage1.recipe=simclrr"])


_STEPS = ["trainer=cpu", "trainer.enable_progress_bar=false", "trainer.limit_train_batches=4",
          "trainer.limit_val_batches=1", "stage1.epochs=3", "data.batch_size=32",
          "backbone=cifar_resnet20", "stage1.optim.lr=0.05", "stage1.adversarial.steps=1",
          "stage1.simclr.epochs=3"]  # fmt: skip


def _clean_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Cross-entropy of ``model`` on a fixed batch, with batch statistics (a copy in training
    mode: a few steps leave the running statistics far from the data's)."""
    net = copy.deepcopy(model).train()
    with torch.no_grad():
        return float(F.cross_entropy(net(images), labels))


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_simclr_module_lowers_nt_xent_on_fixed_views() -> None:
    torch.manual_seed(0)
    cfg = load_config(["data=digits", "backbone=cifar_resnet20"])
    dm = build_data(train_settings(cfg).stage1)
    images = next(iter(dm.loader(dm.split("train"), batch_size=32)))[0]
    aug = SimCLRAugment(min_scale=0.5)
    v1, v2 = (
        torch.stack(
            [aug(x, torch.Generator().manual_seed(2 * i + k)) for i, x in enumerate(images)]
        )
        for k in (0, 1)
    )
    model = SimCLRPretraining(
        build_backbone(train_settings(cfg).stage1, dm.num_classes, dm.image_shape),
        projection_dim=32, temperature=0.5, optim={"lr": 0.05},
    )  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = model.training_step((v1, v2), 0)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.1, losses
    assert model.backbone.head.weight.grad is None or not model.backbone.head.weight.grad.any()


@pytest.mark.parametrize("recipe", [*RECIPES, "augmix+jsd"])
def test_recipe_trains_on_digits_and_checkpoint_reloads(recipe: str, tmp_path: Path) -> None:
    extra = ["stage1.augmix_jsd=12"] if recipe == "augmix+jsd" else []
    recipe = recipe.removesuffix("+jsd")
    cfg = load_config([*_STEPS, f"stage1.recipe={recipe}", f"run.dir={tmp_path}", *extra])
    torch.manual_seed(0)
    dm = build_data(train_settings(cfg).stage1)
    backbone = build_backbone(train_settings(cfg).stage1, dm.num_classes, dm.image_shape)
    assert hasattr(backbone.net.layer1, "denoise") == (recipe == "denoising")
    images, labels = next(iter(dm.loader(dm.split("train"), batch_size=256)))[:2]
    if extra:  # AugMix triplets: the clean (cropped) image and two AugMix draws of it
        triplet = dm.train_transform(images[0])
        assert triplet.shape == (3, *images[0].shape)
        assert not torch.equal(triplet[1], triplet[2])
    if recipe == "simclr":
        # stage 1 (resuming) reuses the pre-trained trunk and trains only the head on top
        before_pre = [p.detach().clone() for p in backbone.parameters()]
        pretrain_contrastive(train_settings(cfg).stage1, dm, backbone, tmp_path, [])
        changed = [
            not torch.equal(a, b) for a, b in zip(before_pre, backbone.parameters(), strict=True)
        ]
        assert any(changed) and not changed[-1] and not changed[-2]  # trunk, not the head
        trunk = {n: p.detach().clone() for n, p in backbone.named_parameters() if "linear" not in n}
        cfg.run.resume = True
    before = _clean_loss(backbone, images, labels)
    model = stage1(train_settings(cfg).stage1, dm, backbone, tmp_path, loggers=[])
    after = _clean_loss(model.backbone, images, labels)
    assert after < before, f"{recipe}: training loss {before:.3f} -> {after:.3f}"
    if recipe == "simclr":
        assert all(torch.equal(p, trunk[n]) for n, p in backbone.named_parameters() if n in trunk)
    ckpt = tmp_path / "checkpoints" / "stage1-best.ckpt"
    assert torch.load(ckpt, weights_only=True)["state_dict"]
    reloaded_cfg = load_config([*_STEPS, f"stage1.recipe={recipe}", f"backbone.checkpoint={ckpt}"])
    reloaded = build_backbone(
        train_settings(reloaded_cfg).stage1, dm.num_classes, dm.image_shape
    ).eval()
    model.backbone.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(images), model.backbone(images))


def test_device_batches_cover_the_split_and_crop_like_the_batched_augmentation() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(10, 3, 8, 8, generator=g)
    labels = torch.arange(10)
    torch.manual_seed(0)
    plain = list(DeviceBatches(images, labels, batch_size=4))
    assert [len(y) for _, y in plain] == [4, 4, 2]
    seen = torch.cat([y for _, y in plain])
    assert sorted(seen.tolist()) == list(range(10))
    assert all(torch.equal(x, images[y]) for x, y in plain)
    # every augmented image is one of the 3 x 3 crops x 2 flips of its source (pad 1 at 8 px)
    batches = DeviceBatches(images, labels, batch_size=4, augment=["standard"])
    pad = standard_padding(8)
    for x, y in batches:
        for img, label in zip(x, y, strict=True):
            src = images[label][None]
            options = [
                crop_flip(src, torch.tensor([r]), torch.tensor([c]), torch.tensor([f]), size=8,
                          pad=pad)[0]
                for r in range(2 * pad + 1) for c in range(2 * pad + 1) for f in (False, True)
            ]  # fmt: skip
            assert any(torch.equal(img, o) for o in options)
    noisy = DeviceBatches(images, labels, batch_size=10, augment=["gaussian_noise"], noise_std=0.05)
    x, y = next(iter(noisy))
    diff = x - images[y]
    assert x.min() >= 0 and x.max() <= 1 and 0.02 < float(diff.std()) < 0.06


def test_crop_flip_matches_torchvision_crop_and_flip() -> None:
    image = torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(4))
    padded = F.pad(image, (2, 2, 2, 2))
    for r, c, f in ((0, 0, False), (3, 1, True), (4, 4, True)):
        want = padded[..., r : r + 6, c : c + 6]
        want = want.flip(-1) if f else want
        got = crop_flip(
            image, torch.tensor([r]), torch.tensor([c]), torch.tensor([f]), size=6, pad=2
        )
        assert torch.equal(got, want)


def test_on_device_training_path(tmp_path: Path) -> None:
    cfg = load_config(
        [*_STEPS, "stage1.recipe=noise", "data.on_device=true", f"run.dir={tmp_path}"]
    )
    torch.manual_seed(0)
    dm = build_data(train_settings(cfg).stage1)
    assert dm.train_transform is not None  # the CPU path stays configured, unused here
    backbone = build_backbone(train_settings(cfg).stage1, dm.num_classes, dm.image_shape)
    images, labels = next(iter(dm.loader(dm.split("train"), batch_size=256)))[:2]
    before = _clean_loss(backbone, images, labels)
    model = stage1(train_settings(cfg).stage1, dm, backbone, tmp_path, loggers=[])
    assert _clean_loss(model.backbone, images, labels) < before
    with pytest.raises(PipelineError, match="not augmix"):
        build_data(
            train_settings(
                load_config([*_STEPS, "stage1.recipe=augmix", "data.on_device=true"])
            ).stage1
        )
    with pytest.raises(PipelineError, match="SimCLR views"):
        build_data(
            train_settings(
                load_config([*_STEPS, "stage1.recipe=simclr", "data.on_device=true"])
            ).stage1
        )


def test_train_limit_takes_a_seeded_subset_of_the_training_split() -> None:
    full = build_data(train_settings(load_config([])).stage1)
    limited = [
        build_data(train_settings(load_config(["data.train_limit=100"])).stage1) for _ in range(2)
    ]
    indices = [set(d.split("train").indices) for d in limited]
    assert len(indices[0]) == 100 and indices[0] == indices[1]
    assert indices[0] < set(full.split("train").indices)
    assert limited[0].split("val").indices == full.split("val").indices
    assert len(
        build_data(train_settings(load_config(["data.train_limit=100000"])).stage1).split("train")
    ) == len(full.split("train"))


def test_active_learning_refuses_simclr_before_any_work(tmp_path: Path) -> None:
    from introspect.jobs.active import ActiveError, ActiveSettings, run_active

    cfg = load_config(["experiment=active_digits", "stage1.recipe=simclr", f"run.dir={tmp_path}/r"])
    with pytest.raises(ActiveError, match="stage1.recipe=simclr"):
        run_active(ActiveSettings.from_config(cfg))
    assert not (tmp_path / "r").exists()


def test_jsd_consistency_is_the_generalized_jensen_shannon_divergence() -> None:
    from scipy.stats import entropy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    p = logits.softmax(-1).numpy()
    m = p.mean(0)
    want = np.mean(
        [entropy(m[i]) - np.mean([entropy(p[k, i]) for k in range(3)]) for i in range(5)]
    )
    assert float(jsd_consistency(logits)) == pytest.approx(want, rel=1e-6)
    same = torch.randn(1, 5, 4, generator=g).expand(3, -1, -1)
    assert float(jsd_consistency(same)) == pytest.approx(0.0, abs=1e-7)


def test_augmix_jsd_needs_augmix(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="stage1.augmix_jsd=12.0 needs AugMix"):
        build_data(
            train_settings(
                load_config([*_STEPS, "stage1.recipe=noise", "stage1.augmix_jsd=12"])
            ).stage1
        )
