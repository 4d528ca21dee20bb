"""MC dropout, ensembles, BALD / expected entropy and the evaluator's baseline heads, against
hand-written formulas, enumerated dropout masks, direct metric computations and counted
backbone calls."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from introspect.backbones import Backbone
from introspect.metrics import classification_metrics
from introspect.models.stage2 import (
    IntrospectiveClassifier,
    ProbeClassifier,
    ProbeWithOutputClassifier,
)
from introspect.stages.evaluation import HEADS, Evaluator, head_logits
from introspect.uncertainty import (
    MCDropout,
    dropout_layers,
    ensemble_probs,
    expected_entropy,
    mutual_information,
    predictive_entropy,
)

N, D, B = 4, 5, 9


class TinyNet(nn.Module):
    """Conv-ReLU-pool and a linear head; ``dropout`` adds a dropout layer before the head."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, D, 3, padding=1), nn.ReLU()]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(D, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _backbone(seed: int = 0, dropout: float = 0.0) -> Backbone:
    torch.manual_seed(seed)
    net = TinyNet(dropout)
    return Backbone(net, [0.5] * 3, [0.25] * 3, input_size=(3, 6, 6)).eval()


def _images(n: int = B, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


class CallCounter:
    """Counts forward calls of a module (a forward pre-hook)."""

    def __init__(self, module: nn.Module) -> None:
        self.calls = 0
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, *_args: object) -> None:
        self.calls += 1


# ---------------------------------------------------------------- BALD and entropies


def _random_probs(s: int, b: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(s, b, n, generator=g, dtype=torch.float64) * 2, -1)
    probs[0, 0] = torch.tensor([1.0] + [0.0] * (n - 1))  # a one-hot sample: 0 * log 0 = 0
    return probs


def _h(p: list[float]) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


def test_entropies_and_bald_match_hand_written_formulas() -> None:
    probs = _random_probs(6, 5, 4, 0)
    for i in range(probs.shape[1]):
        samples = [probs[s, i].tolist() for s in range(probs.shape[0])]
        mean = [sum(col) / len(samples) for col in zip(*samples, strict=True)]
        pred = _h(mean)
        exp = sum(_h(p) for p in samples) / len(samples)
        assert predictive_entropy(probs)[i].item() == pytest.approx(pred, rel=1e-12)
        assert expected_entropy(probs)[i].item() == pytest.approx(exp, rel=1e-12)
        assert mutual_information(probs)[i].item() == pytest.approx(pred - exp, abs=1e-12)


def test_bald_is_zero_when_samples_agree_and_maximal_for_confident_disagreement() -> None:
    same = _random_probs(1, 3, 4, 1).expand(5, -1, -1)
    torch.testing.assert_close(mutual_information(same), torch.zeros(3, dtype=torch.float64))
    # Two one-hot samples on different classes: no aleatoric part, BALD = log 2.
    split = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert expected_entropy(split).item() == 0
    assert mutual_information(split).item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="samples"):
        mutual_information(torch.ones(3, 2))


def test_ensemble_probs_is_the_mean_softmax() -> None:
    g = torch.Generator().manual_seed(3)
    members = [torch.randn(B, N, generator=g) for _ in range(3)]
    expected = sum(F.softmax(z, -1) for z in members) / 3
    torch.testing.assert_close(ensemble_probs(members), expected)
    with pytest.raises(ValueError, match="at least one"):
        ensemble_probs([])
    with pytest.raises(ValueError, match="shape"):
        ensemble_probs([members[0], members[1][:3]])


# ---------------------------------------------------------------- MC dropout


def test_head_input_dropout_samples_are_masked_head_outputs() -> None:
    """Every sample is ``W (m ⊙ h) / (1 - p) + b`` for one of the 2^D binary masks ``m``, and
    units are dropped at rate ``p``."""
    backbone, x, p = _backbone(), _images(), 0.3
    with torch.no_grad():
        logits, h = backbone.forward_features(x)
    mc = MCDropout(400, p, seed=5)
    samples = mc.sample_logits(backbone, x, penultimate=h)
    assert samples.shape == (400, B, N)
    masks = torch.tensor(list(itertools.product([0.0, 1.0], repeat=D)))  # (2^D, D)
    W, b = backbone.head.weight.detach(), backbone.head.bias.detach()
    with torch.no_grad():
        candidates = (masks[None] * h[:, None] / (1 - p)) @ W.T + b  # (B, 2^D, N)
    dist = (samples.permute(1, 0, 2)[:, :, None] - candidates[:, None]).abs().amax(-1)
    best = dist.min(-1)
    assert float(best.values.max()) < 1e-5  # every sample is one masked output
    dropped = 1 - masks[best.indices]  # (B, S, D), the masks that produced the samples
    assert float(dropped.mean()) == pytest.approx(p, abs=0.03)


def test_dropout_samples_are_unbiased_and_p_zero_is_the_network() -> None:
    backbone, x = _backbone(), _images()
    with torch.no_grad():
        logits, h = backbone.forward_features(x)
    exact = MCDropout(3, 0.0).sample_logits(backbone, x, penultimate=h)
    torch.testing.assert_close(exact, logits.expand(3, -1, -1))
    many = MCDropout(20000, 0.2, seed=1).sample_logits(backbone, x, penultimate=h)
    spread = many.std(0) / math.sqrt(many.shape[0])
    assert bool(((many.mean(0) - logits).abs() < 5 * spread + 1e-6).all())


def test_draws_depend_on_seed_and_key_only() -> None:
    backbone, x = _backbone(), _images()
    mc = MCDropout(4, 0.5, seed=2)
    a = mc.sample_logits(backbone, x, key=7)
    torch.testing.assert_close(a, mc.sample_logits(backbone, x, key=7))
    assert not torch.allclose(a, mc.sample_logits(backbone, x, key=8))
    assert not torch.allclose(a, MCDropout(4, 0.5, seed=3).sample_logits(backbone, x, key=7))


def test_head_input_dropout_reuses_one_backbone_pass() -> None:
    backbone, x = _backbone(), _images()
    counter = CallCounter(backbone.net)
    with torch.no_grad():
        _, h = backbone.forward_features(x)
    mc = MCDropout(16, 0.2)
    assert mc.passes_needed(backbone) == 1
    mc.scores(mc.sample_logits(backbone, x, penultimate=h))
    assert counter.calls == 1  # only the pass above
    mc.sample_logits(backbone, x)  # without h: one pass of its own
    assert counter.calls == 2


def test_backbone_dropout_layers_are_sampled_with_one_pass_each() -> None:
    backbone, x = _backbone(dropout=0.5), _images()
    assert len(dropout_layers(backbone)) == 1
    counter = CallCounter(backbone.net)
    mc = MCDropout(6, 0.0, seed=4)
    assert mc.passes_needed(backbone) == 6
    samples = mc.sample_logits(backbone, x)
    assert counter.calls == 6
    assert not torch.allclose(samples[0], samples[1])  # the backbone's dropout was active
    assert not any(m.training for m in backbone.modules())  # modes restored
    with torch.no_grad():
        plain = backbone(x)
    assert not torch.allclose(samples.mean(0), plain)


def test_mc_dropout_scores_are_negated_bald_and_expected_entropy() -> None:
    backbone, x = _backbone(), _images()
    mc = MCDropout(8, 0.4, seed=9)
    probs = mc.sample_logits(backbone, x, key=3).softmax(-1)
    scores = mc.scores(mc.sample_logits(backbone, x, key=3))
    torch.testing.assert_close(scores["mcd_bald"], -mutual_information(probs))
    torch.testing.assert_close(scores["mcd_expected_entropy"], -expected_entropy(probs))


def test_mc_dropout_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="samples"):
        MCDropout(0, 0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        MCDropout(4, 1.0)


# ---------------------------------------------------------------- the evaluator's heads


def _stage2_heads(backbone: Backbone) -> dict[str, nn.Module]:
    torch.manual_seed(11)
    intro = IntrospectiveClassifier(
        backbone, feature_options={"normalize": "l2"}, num_classes=N, in_dim=N * D, hidden=(8,)
    ).eval()
    ctl = ProbeClassifier(backbone, num_classes=N, in_dim=D, hidden=(8,)).eval()
    hp = ProbeWithOutputClassifier(backbone, num_classes=N, in_dim=D + N, hidden=(8,)).eval()
    return {"introspective": intro, "control": ctl, "control_hp": hp}


def _labels(n: int = B, seed: int = 4) -> torch.Tensor:
    return torch.randint(0, N, (n,), generator=torch.Generator().manual_seed(seed))


def test_evaluator_runs_one_backbone_pass_per_batch_for_all_heads() -> None:
    backbone = _backbone()
    member = _backbone(seed=5)
    heads = _stage2_heads(backbone)
    temps = {"feedforward": 1.7, "introspective": 0.6, "control": 2.5, "control_hp": 1.2}
    evaluator = Evaluator(
        backbone,
        heads,
        ["clean"],
        num_classes=N,
        temperatures=temps,
        mc_dropout=MCDropout(12, 0.3),
        ensemble=[member],
    )
    assert evaluator.head_names == list(HEADS)
    main, other = CallCounter(backbone.net), CallCounter(member.net)
    for batch in range(3):
        evaluator.test_step((_images(seed=batch), _labels(seed=batch)), batch)
    assert main.calls == 3  # one pass per batch for FF, INT, CTL, their twins and MC dropout
    assert other.calls == 3  # the second ensemble member's own pass


def test_tempered_twins_keep_accuracy_and_equal_direct_metrics() -> None:
    backbone = _backbone()
    heads = _stage2_heads(backbone)
    temps = {"feedforward": 1.7, "introspective": 0.6, "control": 2.5, "control_hp": 1.2}
    member = _backbone(seed=5)
    evaluator = Evaluator(
        backbone, heads, ["a"], num_classes=N, temperatures=temps, ensemble=[member]
    )
    x, y = _images(40, seed=8), _labels(40, seed=8)
    evaluator.test_step((x, y), 0)
    results, _ = evaluator.collect()
    entry = results["a"]
    logits, _ = head_logits(backbone, heads, x)
    for name, t in temps.items():
        assert entry[f"{name}_ts"]["acc"] == entry[name]["acc"]
        direct = classification_metrics(N)
        direct.update(F.softmax(logits[name] / t, -1), y)
        for metric, value in direct.compute().items():
            assert entry[f"{name}_ts"][metric] == pytest.approx(float(value), rel=1e-6)
        assert entry[f"{name}_ts"]["nll"] != pytest.approx(entry[name]["nll"], rel=1e-3)
    with torch.no_grad():
        ens = (F.softmax(logits["feedforward"], -1) + F.softmax(member(x), -1)) / 2
    direct = classification_metrics(N)
    direct.update(ens, y)
    assert entry["ensemble"]["nll"] == pytest.approx(float(direct.compute()["nll"]), rel=1e-6)


def test_evaluator_rejects_temperatures_of_missing_heads() -> None:
    backbone = _backbone()
    with pytest.raises(ValueError, match="not evaluated"):
        Evaluator(backbone, {}, ["a"], num_classes=N, temperatures={"introspective": 1.0})
