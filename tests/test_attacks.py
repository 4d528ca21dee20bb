"""Evaluation-time attacks: against their definitions and against torchattacks (test oracle)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from introspect.attacks import ATTACKS, attack_by_name, bim, cw_l2, fgsm, iterll, pgd

torchattacks = pytest.importorskip("torchattacks")


class Offset(nn.Module):
    """Adds a constant to the logits: softmax, cross-entropy and C&W's margin are unchanged."""

    def __init__(self, net: nn.Module, offset: float) -> None:
        super().__init__()
        self.net = net
        self.offset = offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + self.offset


def _net() -> nn.Module:
    torch.manual_seed(0)
    return (
        nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(6 * 8 * 8, 10),
        )
        .double()
        .eval()
    )


def _batch(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, 8, 8, generator=g, dtype=torch.float64) * 0.98 + 0.01
    return x, torch.randint(0, 10, (n,), generator=g)


def test_fgsm_is_its_definition() -> None:
    net, (x, y) = _net(), _batch()
    eps = 8 / 255
    xr = x.clone().requires_grad_(True)
    loss = sum(F.cross_entropy(net(xr[i : i + 1]), y[i : i + 1]) for i in range(len(x)))
    (g,) = torch.autograd.grad(loss, xr)
    torch.testing.assert_close(fgsm(net, x, y, eps=eps), (x + eps * g.sign()).clamp(0, 1))
    assert all(p.grad is None and p.requires_grad for p in net.parameters())


@pytest.mark.parametrize("eps", [2 / 255, 8 / 255])
def test_fgsm_bim_pgd_match_torchattacks(eps: float) -> None:
    net, (x, y) = _net(), _batch()
    oracle = torchattacks.FGSM(net, eps=eps)
    torch.testing.assert_close(fgsm(net, x, y, eps=eps), oracle(x, y))
    oracle = torchattacks.BIM(net, eps=eps, alpha=1 / 255, steps=7)
    torch.testing.assert_close(bim(net, x, y, eps=eps, alpha=1 / 255, steps=7), oracle(x, y))
    oracle = torchattacks.PGD(net, eps=eps, alpha=2 / 255, steps=5, random_start=False)
    ours = pgd(net, x, y, eps=eps, alpha=2 / 255, steps=5, random_start=False)
    torch.testing.assert_close(ours, oracle(x, y))


def test_bim_default_steps_are_kurakins() -> None:
    net, (x, y) = _net(), _batch()
    # torchattacks' BIM with steps=0 uses Kurakin et al.'s rule too
    oracle = torchattacks.BIM(net, eps=4 / 255, alpha=1 / 255, steps=0)
    torch.testing.assert_close(bim(net, x, y, eps=4 / 255), oracle(x, y))


def test_iterll_matches_torchattacks_least_likely_bim() -> None:
    net, (x, y) = _net(), _batch()
    oracle = torchattacks.BIM(net, eps=8 / 255, alpha=1 / 255, steps=6)
    oracle.set_mode_targeted_least_likely(quiet=True)
    ours = iterll(net, x, y, eps=8 / 255, alpha=1 / 255, steps=6)
    # torchattacks leaves the given label out of the least-likely search; given the predicted
    # class (never the least likely one) it searches every class, as Kurakin et al. do.
    with torch.no_grad():
        predicted = net(x).argmax(1)
    torch.testing.assert_close(ours, oracle(x, predicted))
    with torch.no_grad():
        ll = net(x).argmin(1)
        assert (net(ours).gather(1, ll[:, None]) > net(x).gather(1, ll[:, None])).all()


def test_pgd_random_start_is_seeded_and_stays_in_the_ball() -> None:
    net, (x, y) = _net(), _batch()
    eps = 8 / 255
    a = pgd(net, x, y, eps=eps, steps=3, seed=3)
    torch.testing.assert_close(a, pgd(net, x, y, eps=eps, steps=3, seed=3))
    assert not torch.equal(a, pgd(net, x, y, eps=eps, steps=3, seed=4))
    assert not torch.equal(a, pgd(net, x, y, eps=eps, steps=3, random_start=False))
    assert (a - x).abs().max() <= eps + 1e-12 and a.min() >= 0 and a.max() <= 1


@pytest.mark.slow
def test_cw_matches_torchattacks() -> None:
    # torchattacks masks the logits with zeros, which is C&W's margin only for positive logits:
    # the offset makes them positive without changing the attack. It also stops the whole batch
    # as soon as the summed cost rises; a large kappa keeps the margin term falling, so it runs
    # every step, as ours does.
    net, (x, y) = Offset(_net(), 100.0).eval(), _batch()
    oracle = torchattacks.CW(net, c=5.0, kappa=1e3, steps=20, lr=0.01)
    ours = cw_l2(net, x, y, c=5.0, kappa=1e3, steps=20, lr=0.01)
    torch.testing.assert_close(ours, oracle(x, y))
    with torch.no_grad():
        changed = (ours != x).flatten(1).any(1)
        assert changed.any()
        assert (net(ours[changed]).argmax(1) != y[changed]).all()


@pytest.mark.slow
def test_cw_eps_bounds_the_distance_and_search_helps() -> None:
    net, (x, y) = _net(), _batch(16)
    free = cw_l2(net, x, y, c=0.05, steps=30, lr=0.02)
    l2 = (free - x).flatten(1).norm(dim=1)
    bound = float(l2[l2 > 0].median())
    capped = cw_l2(net, x, y, c=0.05, steps=30, lr=0.02, eps=bound)
    assert (capped - x).flatten(1).norm(dim=1).max() <= bound + 1e-9
    searched = cw_l2(net, x, y, c=0.05, steps=30, lr=0.02, search_steps=3)
    with torch.no_grad():
        fooled = (net(searched).argmax(1) != y).sum()
        assert fooled >= (net(free).argmax(1) != y).sum()
        assert fooled > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_is_per_sample_and_in_range(name: str) -> None:
    net, (x, y) = _net(), _batch(6)
    kwargs = {"eps": 8 / 255} if name != "cw" else {"steps": 5}
    if name == "pgd":
        kwargs["random_start"] = False
    attack = attack_by_name(name)
    whole = attack(net, x, y, **kwargs)
    parts = torch.cat([attack(net, x[i : i + 2], y[i : i + 2], **kwargs) for i in (0, 2, 4)])
    torch.testing.assert_close(whole, parts)
    assert whole.min() >= 0 and whole.max() <= 1 and whole.device == x.device
    assert all(p.grad is None and p.requires_grad for p in net.parameters())


def test_bad_arguments_fail_clearly() -> None:
    net, (x, y) = _net(), _batch(2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fgsm(net, x * 3, y, eps=0.1)
    with pytest.raises(ValueError, match="steps >= 1"):
        pgd(net, x, y, eps=0.1, steps=0)
    with pytest.raises(KeyError, match="choose from"):
        attack_by_name("deepfool")
