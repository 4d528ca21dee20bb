"""Calibration metrics and reliability diagrams against independent references.

References: plain numpy/python loops written here, torchmetrics' MulticlassCalibrationError,
``F.nll_loss``/``F.cross_entropy``, closed forms and hand-computed small cases.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image
from torchmetrics.classification import MulticlassCalibrationError

from introspect.metrics import (
    AdaptiveCalibrationError,
    BrierScore,
    ExpectedCalibrationError,
    MaxCalibrationError,
    NegativeLogLikelihood,
    classification_metrics,
    reliability_bins,
    reliability_diagram,
    reliability_grid,
)
from tests.conftest import run_two_process_script

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def random_batch(
    n: int, num_classes: int, seed: int, temperature: float = 1.0, dtype=torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities of random logits and targets agreeing with argmax ~half the time."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, num_classes, generator=g, dtype=torch.float64) * 3 / temperature
    target = torch.randint(0, num_classes, (n,), generator=g)
    keep = torch.rand(n, generator=g) < 0.5
    target = torch.where(keep, logits.argmax(1), target)
    return logits.softmax(1).to(dtype), target


# --- numpy references ----------------------------------------------------------------------------


def ref_bins(probs: np.ndarray, target: np.ndarray, n_bins: int) -> list[list[tuple[float, float]]]:
    """(confidence, correct) pairs per right-closed equal-width bin (lo, hi], by explicit loops."""
    bins: list[list[tuple[float, float]]] = [[] for _ in range(n_bins)]
    for row, t in zip(probs, target, strict=True):
        conf = float(max(row))
        pred = int(np.argmax(row))
        for b in range(n_bins):
            lo, hi = b / n_bins, (b + 1) / n_bins
            if lo < conf <= hi:
                bins[b].append((conf, float(pred == t)))
                break
        else:
            raise AssertionError(f"confidence {conf} fell in no bin")
    return bins


def ref_ece(probs: np.ndarray, target: np.ndarray, n_bins: int) -> float:
    n = len(target)
    total = 0.0
    for members in ref_bins(probs, target, n_bins):
        if members:
            acc = sum(c for _, c in members) / len(members)
            conf = sum(p for p, _ in members) / len(members)
            total += len(members) / n * abs(acc - conf)
    return total


def ref_mce(probs: np.ndarray, target: np.ndarray, n_bins: int) -> float:
    gaps = []
    for members in ref_bins(probs, target, n_bins):
        if members:
            acc = sum(c for _, c in members) / len(members)
            conf = sum(p for p, _ in members) / len(members)
            gaps.append(abs(acc - conf))
    return max(gaps)


def ref_aece(probs: np.ndarray, target: np.ndarray, n_bins: int) -> float:
    """Equal-mass bins: sort by confidence, the first n % n_bins groups get one extra sample."""
    conf = probs.max(1)
    correct = (probs.argmax(1) == target).astype(float)
    pairs = sorted(zip(conf.tolist(), correct.tolist(), strict=True))
    n = len(pairs)
    base, extra = n // n_bins, n % n_bins
    total, start = 0.0, 0
    for g in range(n_bins):
        size = base + (1 if g < extra else 0)
        group = pairs[start : start + size]
        start += size
        if group:
            acc = sum(c for _, c in group) / size
            mean_conf = sum(p for p, _ in group) / size
            total += size / n * abs(acc - mean_conf)
    assert start == n
    return total


def ref_brier(probs: np.ndarray, target: np.ndarray) -> float:
    total = 0.0
    for row, t in zip(probs, target, strict=True):
        total += sum((p - (1.0 if c == t else 0.0)) ** 2 for c, p in enumerate(row))
    return total / len(target)


def value(metric, probs: torch.Tensor, target: torch.Tensor) -> float:
    metric.update(probs, target)
    return float(metric.compute())


# --- equal-width ECE / MCE -----------------------------------------------------------------------


@pytest.mark.parametrize("n_bins", [1, 5, 15])
@pytest.mark.parametrize("seed", [0, 1])
def test_ece_and_mce_match_numpy_loops(n_bins: int, seed: int) -> None:
    probs, target = random_batch(300, 7, seed)
    p, t = probs.numpy(), target.numpy()
    assert value(ExpectedCalibrationError(n_bins), probs, target) == pytest.approx(
        ref_ece(p, t, n_bins), abs=1e-6
    )
    assert value(MaxCalibrationError(n_bins), probs, target) == pytest.approx(
        ref_mce(p, t, n_bins), abs=1e-6
    )


@pytest.mark.parametrize("n_bins", [10, 15])
@pytest.mark.parametrize("seed", [2, 3])
def test_ece_and_mce_match_torchmetrics(n_bins: int, seed: int) -> None:
    # torchmetrics bins are [lo, hi) plus a separate bin for confidence 1.0; ours are (lo, hi].
    # They agree when no confidence lies on an edge, which the assertion below makes sure of.
    probs, target = random_batch(500, 10, seed, dtype=torch.float32)
    conf = probs.max(1).values.double()
    scaled = conf * n_bins
    assert (scaled - scaled.round()).abs().min() > 1e-4
    for norm, ours in (("l1", ExpectedCalibrationError), ("max", MaxCalibrationError)):
        reference = MulticlassCalibrationError(num_classes=10, n_bins=n_bins, norm=norm)
        expected = float(reference(probs, target))
        assert value(ours(n_bins), probs, target) == pytest.approx(expected, abs=1e-5)


def test_two_bin_hand_example_and_right_closed_boundary() -> None:
    # Bins (0, .5] and (.5, 1]. Sample 1 has confidence exactly .5 -> first bin; 1.0 -> last bin.
    probs = torch.tensor(
        [[0.5, 0.3, 0.2], [0.2, 0.7, 0.1], [0.8, 0.1, 0.1], [1.0, 0.0, 0.0]], dtype=torch.float64
    )
    target = torch.tensor([0, 1, 1, 0])
    # bin 0: 1 sample, acc 1, conf .5, gap .5; bin 1: 3 samples, acc 2/3, conf 2.5/3, gap 1/6.
    # ECE = 1/4 * 1/2 + 3/4 * 1/6 = 1/4; MCE = 1/2.
    assert value(ExpectedCalibrationError(2), probs, target) == pytest.approx(0.25, abs=1e-7)
    assert value(MaxCalibrationError(2), probs, target) == pytest.approx(0.5, abs=1e-7)
    bins = reliability_bins(probs, target, n_bins=2)
    np.testing.assert_array_equal(bins["count"], [1, 3])
    np.testing.assert_allclose(bins["accuracy"], [1.0, 2 / 3])
    np.testing.assert_allclose(bins["confidence"], [0.5, 2.5 / 3])
    np.testing.assert_allclose(bins["edges"], [0.0, 0.5, 1.0])
    assert bins["ece"] == pytest.approx(0.25)


def test_perfectly_calibrated_toy_case_gives_zero() -> None:
    # Confidence c in {.6, .8, 1.0}, five samples each, exactly 5c of them correct: every
    # equal-width bin and every equal-mass group has accuracy == confidence, so all errors are 0.
    rows, targets = [], []
    for conf, n_correct in ((0.6, 3), (0.8, 4), (1.0, 5)):
        for i in range(5):
            rows.append([conf, 1 - conf])
            targets.append(0 if i < n_correct else 1)
    probs = torch.tensor(rows, dtype=torch.float64)
    target = torch.tensor(targets)
    assert value(ExpectedCalibrationError(15), probs, target) == pytest.approx(0.0, abs=1e-7)
    assert value(MaxCalibrationError(15), probs, target) == pytest.approx(0.0, abs=1e-7)
    assert value(AdaptiveCalibrationError(3), probs, target) == pytest.approx(0.0, abs=1e-7)


def test_always_wrong_confident_model_has_ece_equal_to_mean_confidence() -> None:
    # Closed form: with accuracy 0 in every bin, ECE = mean confidence and MCE = max bin mean.
    probs = torch.tensor([[0.9, 0.1], [0.75, 0.25], [0.95, 0.05]], dtype=torch.float64)
    target = torch.tensor([1, 1, 1])
    assert value(ExpectedCalibrationError(10), probs, target) == pytest.approx(2.6 / 3)
    assert value(MaxCalibrationError(10), probs, target) == pytest.approx(0.95)


# --- adaptive ECE --------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "n_bins"), [(300, 15), (301, 15), (97, 10), (7, 3)])
def test_adaptive_ece_matches_numpy_reference(n: int, n_bins: int) -> None:
    probs, target = random_batch(n, 5, seed=n)
    expected = ref_aece(probs.numpy(), target.numpy(), n_bins)
    assert value(AdaptiveCalibrationError(n_bins), probs, target) == pytest.approx(
        expected, abs=1e-7
    )


def test_adaptive_ece_ties_and_fewer_samples_than_bins() -> None:
    # All confidences .6; ties are ordered wrong-before-correct, so 2 groups are {w, w}, {c, c}:
    # AECE = 1/2 * |0 - .6| + 1/2 * |1 - .6| = .5, whatever the sample order.
    probs = torch.tensor([[0.6, 0.4]] * 4, dtype=torch.float64)
    for target in (torch.tensor([0, 1, 0, 1]), torch.tensor([1, 1, 0, 0])):
        assert value(AdaptiveCalibrationError(2), probs, target) == pytest.approx(0.5)
    # Fewer samples than bins: one sample per group, AECE = mean |correct - confidence|.
    probs = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.55, 0.45]], dtype=torch.float64)
    target = torch.tensor([0, 0, 0])
    expected = (abs(1 - 0.7) + abs(0 - 0.8) + abs(1 - 0.55)) / 3
    assert value(AdaptiveCalibrationError(5), probs, target) == pytest.approx(expected)


# --- NLL and Brier -------------------------------------------------------------------------------


def test_nll_matches_torch_losses() -> None:
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(200, 6, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, 6, (200,), generator=g)
    probs = logits.softmax(1)
    got = value(NegativeLogLikelihood(), probs, target)
    # compute() returns the default dtype (float32), hence the tolerance.
    assert got == pytest.approx(float(F.nll_loss(probs.log(), target)), rel=1e-6)
    assert got == pytest.approx(float(F.cross_entropy(logits, target)), rel=1e-6)


def test_nll_clamps_zero_probability_at_eps() -> None:
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    target = torch.tensor([1, 0])
    expected = (-math.log(1e-12) - math.log(0.5)) / 2
    assert value(NegativeLogLikelihood(), probs, target) == pytest.approx(expected)
    expected_custom = (-math.log(1e-4) - math.log(0.5)) / 2
    assert value(NegativeLogLikelihood(eps=1e-4), probs, target) == pytest.approx(expected_custom)


def test_brier_matches_loop_and_extremes() -> None:
    probs, target = random_batch(150, 4, seed=5)
    assert value(BrierScore(), probs, target) == pytest.approx(
        ref_brier(probs.numpy(), target.numpy()), rel=1e-6
    )
    # Certain and right: 0; certain and wrong: 2 (the multi-class score's maximum).
    certain = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    assert value(BrierScore(), certain, torch.tensor([0])) == pytest.approx(0.0)
    assert value(BrierScore(), certain, torch.tensor([2])) == pytest.approx(2.0)


# --- streaming, merging, collection --------------------------------------------------------------

ALL_METRICS = (
    lambda: ExpectedCalibrationError(8),
    lambda: MaxCalibrationError(8),
    lambda: AdaptiveCalibrationError(8),
    NegativeLogLikelihood,
    BrierScore,
)


@pytest.mark.parametrize("make", ALL_METRICS)
def test_streaming_equals_single_update_and_merge(make) -> None:
    probs, target = random_batch(257, 5, seed=6, dtype=torch.float32)
    whole = value(make(), probs, target)
    streamed = make()
    for chunk_p, chunk_t in zip(probs.split(40), target.split(40), strict=True):
        streamed.update(chunk_p, chunk_t)
    assert float(streamed.compute()) == pytest.approx(whole, abs=1e-6)
    # forward() returns the batch value and still accumulates.
    forwarded = make()
    batch_value = forwarded(probs[:100], target[:100])
    assert float(batch_value) == pytest.approx(value(make(), probs[:100], target[:100]), abs=1e-6)
    forwarded.update(probs[100:], target[100:])
    assert float(forwarded.compute()) == pytest.approx(whole, abs=1e-6)
    # Merging states uses the registered dist_reduce_fx, as DDP synchronization does.
    left, right = make(), make()
    left.update(probs[:130], target[:130])
    right.update(probs[130:], target[130:])
    left.merge_state(right)
    assert float(left.compute()) == pytest.approx(whole, abs=1e-6)


def test_classification_metrics_collection_keys_values_and_clone() -> None:
    probs, target = random_batch(120, 4, seed=7, dtype=torch.float32)
    collection = classification_metrics(4, n_bins=6)
    clone = collection.clone(prefix="val/")
    collection.update(probs, target)
    clone.update(probs, target)
    result = collection.compute()
    assert set(result) == {"acc", "ece", "aece", "mce", "nll", "brier"}
    assert set(clone.compute()) == {f"val/{k}" for k in result}
    p, t = probs.double().numpy(), target.numpy()
    assert float(result["acc"]) == pytest.approx(float((p.argmax(1) == t).mean()))
    assert float(result["ece"]) == pytest.approx(ref_ece(p, t, 6), abs=1e-6)
    assert float(result["mce"]) == pytest.approx(ref_mce(p, t, 6), abs=1e-6)
    assert float(result["aece"]) == pytest.approx(ref_aece(p, t, 6), abs=1e-6)
    assert float(result["brier"]) == pytest.approx(ref_brier(p, t), abs=1e-6)
    assert float(result["nll"]) == pytest.approx(float(F.nll_loss(probs.log(), target)), rel=1e-5)
    prefixed = classification_metrics(4, prefix="test/")
    batch_values = prefixed(probs, target)  # forward, as in a Lightning step
    assert set(batch_values) == {f"test/{k}" for k in result}
    assert float(batch_values["test/ece"]) == pytest.approx(ref_ece(p, t, 15), abs=1e-6)


@pytest.mark.parametrize("make", ALL_METRICS)
def test_compute_without_samples_is_nan(make) -> None:
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(float(make().compute()))


DDP_SCRIPT = """
import json, os, sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from introspect.metrics import classification_metrics

def data():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(203, 5, generator=g) * 3
    target = torch.randint(0, 5, (203,), generator=g)
    keep = torch.rand(203, generator=g) < 0.6
    return logits.softmax(1), torch.where(keep, logits.argmax(1), target)

def run(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    probs, target = data()
    metrics = classification_metrics(5, n_bins=7)
    metrics.update(probs[rank::world], target[rank::world])  # uneven shards: 102 and 101
    values = {k: float(v) for k, v in metrics.compute().items()}
    if rank == 0:
        with open(out, "w") as f:
            json.dump(values, f)
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(run, args=(2, int(sys.argv[1]), sys.argv[2]), nprocs=2)
"""


@pytest.mark.slow
def test_ddp_sync_over_two_processes_equals_one_process(tmp_path) -> None:
    synced = run_two_process_script(tmp_path, DDP_SCRIPT)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(203, 5, generator=g) * 3
    target = torch.randint(0, 5, (203,), generator=g)
    keep = torch.rand(203, generator=g) < 0.6
    probs, target = logits.softmax(1), torch.where(keep, logits.argmax(1), target)
    p, t = probs.double().numpy(), target.numpy()
    assert synced["acc"] == pytest.approx(float((p.argmax(1) == t).mean()), abs=1e-6)
    assert synced["ece"] == pytest.approx(ref_ece(p, t, 7), abs=1e-6)
    assert synced["mce"] == pytest.approx(ref_mce(p, t, 7), abs=1e-6)
    assert synced["aece"] == pytest.approx(ref_aece(p, t, 7), abs=1e-6)
    assert synced["brier"] == pytest.approx(ref_brier(p, t), abs=1e-6)
    assert synced["nll"] == pytest.approx(float(F.nll_loss(probs.log(), target)), rel=1e-5)


# --- error paths ---------------------------------------------------------------------------------


def test_wrong_number_of_classes_names_both() -> None:
    probs, target = random_batch(10, 5, seed=8)
    with pytest.raises(ValueError, match=r"5 classes.*num_classes=4"):
        ExpectedCalibrationError(num_classes=4).update(probs, target)
    collection = classification_metrics(4)
    with pytest.raises(ValueError, match=r"5 classes.*num_classes=4"):
        collection.update(probs, target)
    with pytest.raises(ValueError, match=r"5 classes.*num_classes=4"):
        collection(probs, target)
    with pytest.raises(ValueError, match="softmax"):
        collection(probs.log()[:, :4], target)
    # Without num_classes the first batch fixes N; reset() forgets it.
    metric = BrierScore()
    metric.update(probs, target)
    other_probs, other_target = random_batch(10, 3, seed=9)
    with pytest.raises(ValueError, match=r"3 classes.*num_classes=5"):
        metric.update(other_probs, other_target)
    metric.reset()
    metric.update(other_probs, other_target)
    assert float(metric.compute()) == pytest.approx(
        ref_brier(other_probs.numpy(), other_target.numpy())
    )


@pytest.mark.parametrize(
    ("probs", "target", "error", "pattern"),
    [
        (torch.full((2, 3, 1), 1 / 3), torch.tensor([0, 1]), ValueError, "batch, num_classes"),
        (torch.full((2, 3), 1 / 3), torch.tensor([[0], [1]]), ValueError, r"\(batch,\)"),
        (torch.full((2, 3), 1 / 3), torch.tensor([0, 1, 2]), ValueError, "2 rows"),
        (torch.full((2, 3), 1 / 3), torch.tensor([0.0, 1.0]), TypeError, r"\.long\(\)"),
        (torch.ones(2, 3, dtype=torch.int64), torch.tensor([0, 1]), TypeError, "floating"),
        (torch.tensor([[2.0, -1.0], [0.5, 0.5]]), torch.tensor([0, 1]), ValueError, "softmax"),
        (torch.tensor([[0.5, 0.4], [0.5, 0.5]]), torch.tensor([0, 1]), ValueError, "sum to 1"),
        (torch.tensor([[math.nan, 0.5], [0.5, 0.5]]), torch.tensor([0, 1]), ValueError, "NaN"),
        (torch.tensor([[0.5, 0.5], [0.5, 0.5]]), torch.tensor([0, 2]), ValueError, r"\[0, 2\)"),
        (torch.tensor([[0.5, 0.5], [0.5, 0.5]]), torch.tensor([-1, 0]), ValueError, r"\[0, 2\)"),
    ],
)
def test_invalid_inputs_raise(probs, target, error, pattern) -> None:
    for metric in (ExpectedCalibrationError(), AdaptiveCalibrationError(), NegativeLogLikelihood()):
        with pytest.raises(error, match=pattern):
            metric.update(probs, target)
    with pytest.raises(error, match=pattern):
        reliability_bins(probs, target)


def test_invalid_constructor_arguments() -> None:
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n_bins"):
            ExpectedCalibrationError(bad)
        with pytest.raises(ValueError, match="n_bins"):
            AdaptiveCalibrationError(bad)
    with pytest.raises(ValueError, match="num_classes"):
        MaxCalibrationError(num_classes=1)
    with pytest.raises(ValueError, match="eps"):
        NegativeLogLikelihood(eps=0.0)
    with pytest.raises(ValueError, match="at least one panel"):
        reliability_grid({})
    with pytest.raises(ValueError, match="at least one sample"):
        reliability_bins(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64))


# --- reliability diagrams ------------------------------------------------------------------------


def test_reliability_bins_match_loop_reference() -> None:
    probs, target = random_batch(400, 10, seed=10, dtype=torch.float32)
    bins = reliability_bins(probs.numpy(), target.numpy(), n_bins=12)
    ref = ref_bins(probs.double().numpy(), target.numpy(), 12)
    assert bins["count"].sum() == 400
    np.testing.assert_array_equal(bins["count"], [len(m) for m in ref])
    for b, members in enumerate(ref):
        if members:
            assert bins["accuracy"][b] == pytest.approx(np.mean([c for _, c in members]))
            assert bins["confidence"][b] == pytest.approx(np.mean([p for p, _ in members]))
        else:
            assert math.isnan(bins["accuracy"][b]) and math.isnan(bins["confidence"][b])
    assert bins["ece"] == pytest.approx(ref_ece(probs.double().numpy(), target.numpy(), 12))


def _assert_png(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert len(data) > 0 and data[:8] == PNG_MAGIC
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def test_reliability_diagram_writes_png(tmp_path) -> None:
    probs, target = random_batch(300, 10, seed=11)
    path = tmp_path / "plots" / "reliability.png"
    fig = reliability_diagram(probs, target, n_bins=10, title="backbone", path=path)
    assert isinstance(fig, Figure)
    width, height = _assert_png(path)
    assert width > 0 and height > width  # one column: reliability panel above the histogram
    expected = ref_ece(probs.numpy(), target.numpy(), 10)
    assert f"ECE = {100 * expected:.2f} %" in fig.axes[0].get_title()  # % as in the tables
    assert "backbone" in fig.axes[0].get_title()


def test_reliability_grid_writes_png(tmp_path) -> None:
    panels = {
        name: random_batch(200, 10, seed=12 + i, temperature=temperature)
        for i, (name, temperature) in enumerate(
            (("feed-forward", 1.0), ("introspective", 2.0), ("control", 0.5))
        )
    }
    path = tmp_path / "grid.png"
    fig = reliability_grid(panels, n_bins=10, title="run r1: clean test split", path=path)
    assert len(fig.axes) == 6
    assert fig.get_suptitle() == "run r1: clean test split"
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    for ax in fig.axes:  # the legend sits outside every panel
        assert not box.overlaps(ax.get_window_extent(renderer))
    assert {ax.get_ylabel() for ax in fig.axes} == {"accuracy", "fraction"}
    assert all(ax.get_xlabel() == "confidence" for ax in fig.axes[3:])
    width, height = _assert_png(path)
    assert width > height  # three columns side by side
    titles = [ax.get_title() for ax in fig.axes[:3]]
    for title, name in zip(titles, panels, strict=True):
        assert name in title


@pytest.mark.parametrize("n_panels", [1, 2, 8])
def test_reliability_grid_draws_titles_and_legend_inside_the_figure(n_panels: int) -> None:
    from tests.conftest import assert_drawn_inside

    panels = {
        f"head number {i} with a long name": random_batch(50, 10, seed=i) for i in range(n_panels)
    }
    title = "run a-rather-long-run-directory-name-2026-12-07-seed0: 15 corruption cells pooled"
    fig = reliability_grid(panels, n_bins=10, title=title)
    assert_drawn_inside(fig)
    assert " ".join(fig.get_suptitle().split()) == title


def test_reliability_panels_of_a_run_name_the_heads_in_words(tmp_path, monkeypatch) -> None:
    import introspect.stages.evaluate as evaluate_module
    from introspect.metrics import ExpectedCalibrationError

    probs, target = random_batch(100, 10, seed=3)
    metric = ExpectedCalibrationError(n_bins=15)
    metric.update(probs, target)
    sums = metric.bin_sums()
    heads = ("feedforward", "feedforward_ts", "introspective_ts", "mc_dropout")
    splits = ["clean", "fog/1", "fog/5"]
    bins = {split: {h: sums for h in heads} for split in splits}
    drawn = []
    grid = evaluate_module.reliability_grid

    def capture(panels, **kwargs):
        drawn.append(list(panels))
        return grid(panels, **kwargs)

    monkeypatch.setattr(evaluate_module, "reliability_grid", capture)
    paths = evaluate_module._reliability_plots(bins, splits, tmp_path, "r1")
    assert [p.name for p in paths] == ["reliability_clean.png", "reliability_corrupted.png"]
    words = ["feed-forward", "feed-forward + TS", "introspective + TS", "MC dropout"]
    assert drawn == [words, words]
