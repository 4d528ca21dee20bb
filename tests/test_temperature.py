"""Temperature scaling against a fine grid search of the NLL, ``F.cross_entropy`` and closed
cases; the calibration-split rules of a run."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from introspect.metrics import fit_temperature, temper, temperature_nll


def _overconfident(n: int, classes: int, seed: int, scale: float) -> tuple[torch.Tensor, ...]:
    """Logits whose argmax is right ~70 % of the time, multiplied by ``scale``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(n, classes, generator=g)
    logits[torch.arange(n), labels] += 1.5
    return logits * scale, labels


def _nll_grid(logits: torch.Tensor, labels: torch.Tensor, temps: np.ndarray) -> np.ndarray:
    """NLL (``F.cross_entropy``, float64) of ``logits / t`` for every ``t`` of ``temps``."""
    z = logits.double()
    out = []
    for chunk in np.array_split(temps, max(1, len(temps) // 50)):
        t = torch.as_tensor(chunk, dtype=torch.float64)[:, None, None]
        scaled = (z[None] / t).reshape(-1, z.shape[1])  # every temperature at once
        nll = F.cross_entropy(scaled, labels.repeat(len(chunk)), reduction="none")
        out.append(nll.reshape(len(chunk), -1).mean(1).numpy())
    return np.concatenate(out)


def _grid_optimum(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """argmin of the NLL over a log-spaced grid of 1e-4 steps (relative error < 1e-4) around
    the optimum of a coarse grid."""
    coarse = np.exp(np.linspace(np.log(0.02), np.log(50), 400))
    best = coarse[int(np.argmin(_nll_grid(logits, labels, coarse)))]
    fine = np.exp(np.arange(np.log(best) - 0.02, np.log(best) + 0.02, 1e-4))
    return float(fine[int(np.argmin(_nll_grid(logits, labels, fine)))])


@pytest.mark.parametrize(("scale", "seed"), [(4.0, 0), (0.3, 1), (1.0, 2), (12.0, 3)])
def test_fit_matches_a_fine_grid_search(scale: float, seed: int) -> None:
    logits, labels = _overconfident(2000, 10, seed, scale)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(_grid_optimum(logits, labels), rel=1e-3)
    # The optimum is a minimum of the NLL the metric computes (F.cross_entropy reference).
    for other in (t * 0.97, t * 1.03):
        assert F.cross_entropy(logits.double() / t, labels) < F.cross_entropy(
            logits.double() / other, labels
        )
    assert temperature_nll(logits, labels, t) == pytest.approx(
        F.cross_entropy(logits.double() / t, labels).item(), rel=1e-12
    )


def test_overconfident_logits_get_a_temperature_above_one_and_underconfident_below() -> None:
    logits, labels = _overconfident(2000, 5, 7, 1.0)
    base = fit_temperature(logits, labels)
    # Scaling the logits by c scales the optimal temperature by c (NLL depends on z/T only).
    assert fit_temperature(3 * logits, labels) == pytest.approx(3 * base, rel=1e-6)
    assert fit_temperature(logits / 4, labels) == pytest.approx(base / 4, rel=1e-6)


def test_tempering_keeps_predictions_and_lowers_nll() -> None:
    logits, labels = _overconfident(1000, 10, 3, 6.0)
    t = fit_temperature(logits, labels)
    tempered = temper(logits, t)
    assert torch.equal(tempered.argmax(1), logits.argmax(1))
    assert F.cross_entropy(tempered, labels) < F.cross_entropy(logits, labels)


def test_separable_data_hit_the_lower_bound_and_hopeless_data_the_upper() -> None:
    labels = torch.arange(20) % 4
    perfect = F.one_hot(labels, 4).float() * 5  # all right, margin 5: sharper is always better
    assert fit_temperature(perfect, labels, t_min=0.05) == 0.05
    wrong = F.one_hot((labels + 1) % 4, 4).float() * 5  # all wrong: flatter is always better
    assert fit_temperature(wrong, labels, t_max=30.0) == 30.0


def test_bad_inputs_raise() -> None:
    z, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="shape"):
        fit_temperature(z[0], y)
    with pytest.raises(ValueError, match="labels"):
        fit_temperature(z, y[:3])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        fit_temperature(z, torch.tensor([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="finite"):
        fit_temperature(torch.full((4, 3), float("nan")), y)
    with pytest.raises(TypeError, match="integer"):
        fit_temperature(z, y.float())
    with pytest.raises(ValueError, match="at least one"):
        fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="positive"):
        temper(z, 0.0)


def test_fit_on_ten_thousand_logits_is_faster_than_a_scalar_search(single_thread) -> None:
    """10,000 x 10 logits: the fit takes no longer than scipy's bounded scalar search of the same
    NLL over log T, timed side by side in this process on one thread (measured ~0.2x; best of
    five each, so a second test process on the same cores cannot decide it)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    logits, labels = _overconfident(10_000, 10, 11, 5.0)
    z, y = logits.double().numpy(), labels.numpy()

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        return float(np.mean(logsumexp(s, axis=1) - s[np.arange(len(y)), y]))

    ours, reference = [], []
    for _ in range(5):
        start = time.perf_counter()
        t_ours = float(fit_temperature(logits, labels))
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        found = minimize_scalar(nll, bounds=(-5.0, 5.0), method="bounded")
        reference.append(time.perf_counter() - start)
    assert t_ours == pytest.approx(float(np.exp(found.x)), rel=1e-3)
    assert min(ours) <= min(reference)
