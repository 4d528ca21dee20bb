"""Stage 2 on gradient factors: heads on factors against the same heads on materialized
features (float32, max relative error 1e-5), the low-rank first layer, the size check, and
index-sliced batches against the per-item DataLoader they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from introspect.config import ConfigError
from introspect.data.batches import IndexedBatches
from introspect.models.stage2 import IntrospectiveClassifier
from introspect.stages.heads import check_head_size
from introspect.stages.options import FeatureOptions, HeadRecipe
from tests.test_factors import factors_of
from tests.test_gradients import N, SmallCNN

pytestmark = pytest.mark.usefixtures("single_thread")

TOL = 1e-5


def _rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape
    return float((actual - expected).detach().abs().max() / expected.detach().abs().max())


class Backbone(SmallCNN):
    """SmallCNN exposing its head as ``head`` (what the registry's backbones do)."""

    @property
    def head(self) -> nn.Linear:
        return self.fc


def _setup(normalize: str, per_class: bool = False, include_bias: bool = True, rank: int = 0):
    torch.manual_seed(0)
    backbone = Backbone().eval()
    options = {"normalize": normalize, "per_class": per_class, "include_bias": include_bias}
    x = torch.randn(48, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    extraction = {**options, "normalize": "none" if normalize == "standardize" else normalize}
    factors = factors_of(backbone, x, head=backbone.fc, **extraction)
    torch.manual_seed(1)
    head = IntrospectiveClassifier(
        backbone, feature_options=options, num_classes=N, in_dim=factors.num_features,
        hidden=(16, 8), dropout=0.0, rank=rank,
    )  # fmt: skip
    return head, factors


@pytest.mark.parametrize("normalize", ["none", "l2", "standardize"])
@pytest.mark.parametrize("per_class", [False, True])
def test_head_on_factors_equals_head_on_materialized(normalize: str, per_class: bool) -> None:
    head, factors = _setup(normalize, per_class)
    x = factors.materialize()
    head.fit_standardizer(x)
    expected = head.classify(x)
    mean, std = head.feature_mean.clone(), head.feature_std.clone()
    head.fit_standardizer(factors)  # the moments from the factors, without materializing
    if normalize == "standardize":
        assert _rel(head.feature_mean, mean) <= TOL and _rel(head.feature_std, std) <= TOL
    assert _rel(head.classify(factors), expected) <= TOL


@pytest.mark.parametrize("rank", [0, 2])
def test_training_on_factors_equals_training_on_materialized(rank: int) -> None:
    """A few AdamW steps on shuffled batches of factors reach the parameters the same steps on
    the materialized features reach."""
    finals = []
    for materialize in (False, True):
        head, factors = _setup("l2", rank=rank)
        inputs = factors.materialize() if materialize else factors
        labels = torch.arange(len(factors)) % N
        opt = torch.optim.AdamW(head.head.parameters(), lr=1e-2)
        torch.manual_seed(3)
        for _ in range(2):
            for x, y in IndexedBatches(inputs, labels, batch_size=16, shuffle=True):
                opt.zero_grad()
                F.cross_entropy(head.classify(x), y).backward()
                opt.step()
        finals.append(torch.cat([p.detach().flatten() for p in head.head.parameters()]))
    assert _rel(finals[0], finals[1]) <= TOL


def test_low_rank_head_has_the_promised_weight_count() -> None:
    head, factors = _setup("l2", include_bias=False, rank=3)
    first = head.head[0]
    d = factors.h.shape[1]
    assert sum(p.numel() for p in first.parameters()) == 16 * 3 * (N + d) + 16


def _backbone(classes: int, inputs: int) -> nn.Module:
    module = nn.Module()
    module.head = nn.Linear(inputs, classes)
    return module


def test_oversize_full_first_layer_stops_before_work_naming_rank() -> None:
    imagenet = _backbone(1000, 2048)  # 2,048,000 features x 256 = 524 M weights
    with pytest.raises(ConfigError, match=r"stage2\.head\.rank=r"):
        check_head_size(imagenet, HeadRecipe(), FeatureOptions())
    check_head_size(imagenet, HeadRecipe(rank=8), FeatureOptions())  # fits
    check_head_size(_backbone(10, 64), HeadRecipe(), FeatureOptions())  # CIFAR ResNet-20
    with pytest.raises(ConfigError, match="normalize"):
        check_head_size(imagenet, HeadRecipe(rank=8), FeatureOptions(normalize="standardize"))


def test_indexed_batches_draw_what_the_tensor_dataloader_draws() -> None:
    x, y = torch.randn(70, 3), torch.arange(70)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    batches = IndexedBatches(x, y, batch_size=16, shuffle=True)
    assert len(batches) == len(loader) == 5
    runs = []
    for source in (loader, batches):
        torch.manual_seed(7)
        runs.append([(bx, by) for _ in range(3) for bx, by in source] + [torch.rand(1)])
    for (ax, ay), (bx, by) in zip(runs[0][:-1], runs[1][:-1], strict=True):
        assert torch.equal(ax, bx) and torch.equal(ay, by)
    assert torch.equal(runs[0][-1], runs[1][-1])  # the same draws from the global generator
    val = [b for b, _ in DataLoader(TensorDataset(x, y), batch_size=16)]
    got = [b for b, _ in IndexedBatches(x, y, batch_size=16)]
    assert all(torch.equal(a, b) for a, b in zip(val, got, strict=True))


@pytest.mark.parametrize("shuffle", [True, False])
def test_indexed_batches_split_like_the_distributed_sampler(shuffle: bool) -> None:
    x = torch.arange(45)
    for rank in range(4):
        sampler = DistributedSampler(x, num_replicas=4, rank=rank, shuffle=shuffle, seed=5)
        batches = IndexedBatches(x, batch_size=4, shuffle=shuffle, rank=rank, world=4, seed=5)
        for epoch in range(2):
            sampler.set_epoch(epoch)
            expected = list(DataLoader(x, batch_size=4, sampler=sampler))
            got = [b for (b,) in batches]
            assert len(got) == len(expected) == len(batches)
            assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
