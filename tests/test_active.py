"""Active learning: acquisition functions against hand-written formulas, autograd and Baal's
heuristics; k-means++ seeding; the label-gated pool; one scored pass per pool image (two processes:
tests/test_ddp.py); the loop end to end on digits, including a pool whose unacquired labels are
poisoned; ``evaluate.py compare`` pooling seeds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from introspect.active.heuristics import (
    STRATEGIES,
    acquire,
    badge_factors,
    bald,
    entropy,
    kmeans_pp,
    least_confidence,
    margin,
    top_k,
)
from introspect.active.loop import area_under_curve, curve_keys
from introspect.active.pool import LabelPool, initial_indices, shard_indices
from introspect.config import load_config
from introspect.jobs.settings import train_settings

PROBS = torch.tensor(
    [
        [0.7, 0.2, 0.1],
        [1 / 3, 1 / 3, 1 / 3],
        [0.5, 0.5, 0.0],
        [0.05, 0.9, 0.05],
        [0.4, 0.35, 0.25],
    ],
    dtype=torch.float64,
)


def test_single_pass_heuristics_match_hand_written_formulas() -> None:
    for row, p in enumerate(PROBS.tolist()):
        h = -sum(x * math.log(x) for x in p if x > 0)
        top = sorted(p, reverse=True)
        assert entropy(PROBS)[row].item() == pytest.approx(h, abs=1e-12)
        assert least_confidence(PROBS)[row].item() == pytest.approx(1 - top[0], abs=1e-12)
        assert margin(PROBS)[row].item() == pytest.approx(top[1] - top[0], abs=1e-12)
    # The uniform row is the most uncertain under all three; the confident row the least.
    for fn in (entropy, least_confidence, margin):
        assert top_k(fn(PROBS), 1).item() == 1
        assert top_k(-fn(PROBS), 1).item() == 3


def test_bald_matches_its_formula_and_is_zero_when_samples_agree() -> None:
    gen = torch.Generator().manual_seed(0)
    samples = torch.rand(7, 4, 5, generator=gen, dtype=torch.float64).softmax(-1)
    for b in range(4):
        s = samples[:, b].numpy()
        mean = s.mean(0)
        expected = -(mean * np.log(mean)).sum() + (s * np.log(s)).sum(1).mean()
        assert bald(samples)[b].item() == pytest.approx(expected, abs=1e-12)
    agree = samples[:1].expand(6, -1, -1)
    assert torch.allclose(bald(agree), torch.zeros(4, dtype=torch.float64), atol=1e-12)


def test_heuristics_agree_with_baal() -> None:
    heuristics = pytest.importorskip("baal.active.heuristics")
    gen = torch.Generator().manual_seed(1)
    probs = torch.rand(50, 6, generator=gen, dtype=torch.float64).softmax(-1)
    p = probs.numpy()
    assert np.allclose(heuristics.Entropy().get_uncertainties(p), entropy(probs).numpy())
    # Baal ranks Margin and Certainty ascending on (top1 - top2) and max p.
    assert np.allclose(heuristics.Margin().get_uncertainties(p), -margin(probs).numpy())
    assert np.allclose(heuristics.Certainty().get_uncertainties(p), 1 - least_confidence(probs))
    samples = torch.rand(20, 50, 6, generator=gen, dtype=torch.float64).softmax(-1)
    baal_bald = heuristics.BALD().get_uncertainties(samples.permute(1, 2, 0).numpy())
    assert np.allclose(baal_bald, bald(samples).numpy(), atol=1e-10)
    # Baal's ranking (most informative first) equals ours where scores have no ties.
    for ours, theirs in (
        (entropy(probs), heuristics.Entropy()),
        (margin(probs), heuristics.Margin()),
        (least_confidence(probs), heuristics.Certainty()),
    ):
        assert top_k(ours, 50).tolist() == list(theirs(p))


def test_badge_embedding_is_the_autograd_gradient_at_the_predicted_label() -> None:
    gen = torch.Generator().manual_seed(2)
    linear = torch.nn.Linear(7, 4).double()
    h = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    logits = linear(h).detach()
    g, hh = badge_factors(logits, h)
    for i in range(5):
        linear.zero_grad()
        z = linear(h[i : i + 1])
        F.cross_entropy(z, z.argmax(-1)).backward()
        assert torch.allclose(torch.outer(g[i], hh[i]), linear.weight.grad, atol=1e-12)


def _reference_kmeans_pp(emb: np.ndarray, k: int, gen: torch.Generator) -> list[int]:
    """k-means++ (BADGE's first centre: the largest norm) on materialized embeddings."""
    chosen = [int(np.argmax((emb**2).sum(1)))]
    d2 = ((emb - emb[chosen[0]]) ** 2).sum(1)
    while len(chosen) < k:
        w = d2.copy()
        w[chosen] = 0
        nxt = int(torch.multinomial(torch.from_numpy(w), 1, generator=gen))
        chosen.append(nxt)
        d2 = np.minimum(d2, ((emb - emb[nxt]) ** 2).sum(1))
    return chosen


def test_kmeans_pp_on_factors_matches_materialized_embeddings() -> None:
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    h = torch.randn(40, 9, generator=gen, dtype=torch.float64)
    emb = torch.einsum("bn,bd->bnd", g, h).reshape(40, -1).numpy()
    ours = kmeans_pp(g, h, 8, generator=torch.Generator().manual_seed(5)).tolist()
    assert ours == _reference_kmeans_pp(emb, 8, torch.Generator().manual_seed(5))
    assert ours == kmeans_pp(g, h, 8, generator=torch.Generator().manual_seed(5)).tolist()
    assert len(set(ours)) == 8


def test_kmeans_pp_covers_separated_clusters_and_skips_duplicates() -> None:
    centres = torch.eye(4, dtype=torch.float64) * 100
    g = torch.ones(40, 1, dtype=torch.float64)
    jitter = torch.randn(40, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h = centres.repeat_interleave(10, 0) + 0.01 * jitter
    picked = kmeans_pp(g, h, 4, generator=torch.Generator().manual_seed(1))
    assert sorted((picked // 10).tolist()) == [0, 1, 2, 3]
    # Two distinct points and copies: the copies have distance 0 and are only taken last.
    g2 = torch.ones(6, 1, dtype=torch.float64)
    h2 = torch.tensor([[1.0], [1.0], [1.0], [5.0], [5.0], [1.0]], dtype=torch.float64)
    first_two = kmeans_pp(g2, h2, 2, generator=torch.Generator().manual_seed(0)).tolist()
    assert {int(h2[i, 0]) for i in first_two} == {1, 5}


def test_acquire_is_deterministic_for_a_seed_and_picks_distinct_images() -> None:
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(30, 10, generator=gen)
    hidden = torch.randn(30, 16, generator=gen)
    mc = torch.randn(8, 30, 10, generator=gen)
    for strategy in STRATEGIES:
        picks = [
            acquire(
                strategy,
                6,
                logits=logits,
                hidden=hidden,
                mc_logits=mc,
                generator=torch.Generator().manual_seed(9),
            ).tolist()
            for _ in range(2)
        ]
        assert picks[0] == picks[1] and len(set(picks[0])) == 6, strategy
    with pytest.raises(ValueError, match="unknown strategy"):
        acquire("coreset", 2, logits=logits, generator=gen)


def test_top_k_breaks_ties_by_lower_index() -> None:
    assert top_k(torch.tensor([1.0, 3.0, 3.0, 0.0, 3.0]), 3).tolist() == [1, 2, 4]


def test_area_under_curve_is_the_normalized_trapezoid() -> None:
    x, y = [20, 40, 80], [0.5, 0.7, 0.8]
    assert area_under_curve(x, y) == pytest.approx(np.trapezoid(y, x) / 60)
    assert area_under_curve([20], [0.4]) == 0.4


@pytest.mark.parametrize("n", [0, 1, 5, 101])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_score_every_pool_image_exactly_once(n: int, world: int) -> None:
    scored = [i for rank in range(world) for i in shard_indices(n, rank, world)]
    assert scored == list(range(n))


class _Recorded(torch.utils.data.Dataset):
    """Images with labels whose reads are recorded (a label read is an ``int()`` of it)."""

    def __init__(self, n: int) -> None:
        self.n, self.read = n, []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        outer = self

        class Label:
            def __int__(self) -> int:
                outer.read.append(i)
                return i % 3

        return torch.full((3, 2, 2), float(i)), Label()


def test_pool_reads_labels_only_of_acquired_images() -> None:
    data = _Recorded(12)
    pool = LabelPool(data, [3, 7])
    images = pool.unlabelled_images()
    _ = [images[i] for i in range(len(images))]
    assert data.read == [3, 7] and len(images) == 10
    pool.label([0, 11])
    assert data.read == [3, 7, 0, 11] and pool.labels == [0, 1, 0, 2]
    twin = pool.copy()
    twin.label([5])
    assert pool.labelled == [3, 7, 0, 11] and twin.labelled == [3, 7, 0, 11, 5]
    with pytest.raises(ValueError, match="twice"):
        pool.label([3])
    assert initial_indices(12, 4, seed=0) == initial_indices(12, 4, seed=0)


def test_curve_keys_run_random_once() -> None:
    keys = curve_keys(["random", "bald"], ["feedforward", "introspective"])
    assert keys == [("random", "any"), ("bald", "feedforward"), ("bald", "introspective")]


# The loop end to end: digits, 10 labelled at round 0, 8 more in each of 2 rounds.
TINY = [
    "experiment=active_digits",
    "active.initial=10",
    "active.per_round=8",
    "active.rounds=2",
    "active.strategies=[random,bald,badge]",
    "active.mc_samples=4",
    "active.batch_size=200",
    "stage1.epochs=1",
    "stage2.head.epochs=1",
    "stage2.head.hidden=[16]",
]


def make_learner(cfg, dm, run_dir: Path, test):
    """The ``RunLearner`` that ``run_active`` builds for ``cfg`` (on the CPU)."""
    from functools import partial

    from introspect.jobs.active import ActiveSettings, RunLearner
    from introspect.runs.trainer import build_trainer
    from introspect.stages.stage1 import build_backbone

    settings = ActiveSettings.from_config(cfg)

    def trainer(epochs: int):
        return build_trainer(
            settings.job.trainer,
            run_dir,
            max_epochs=epochs,
            enable_progress_bar=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
        )

    backbone = partial(build_backbone, settings.options, dm.num_classes, dm.image_shape)
    return RunLearner(settings, dm, torch.device("cpu"), test, backbone=backbone, trainer=trainer)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, single_thread):
    from introspect.jobs.active import ActiveSettings, run_active

    tmp = tmp_path_factory.mktemp("active")
    cfg = load_config([*TINY, f"run.dir={tmp / 'run'}"])
    return cfg, Path(cfg.run.dir), run_active(ActiveSettings.from_config(cfg))


@pytest.mark.slow
def test_active_json_holds_every_curve_round_and_area(finished) -> None:
    cfg, run_dir, results = finished
    saved = json.loads((run_dir / "active.json").read_text())
    assert saved["table"] == json.loads(json.dumps(results["table"]))
    keys = [(c["strategy"], c["source"]) for c in saved["curves"]]
    assert keys == curve_keys(["random", "bald", "badge"], ["feedforward", "introspective"])
    initial = set(saved["run"]["initial"])
    assert len(initial) == 10
    for curve in saved["curves"]:
        rounds = curve["rounds"]
        assert [r["labelled"] for r in rounds] == [10, 18, 26]
        acquired = [i for r in rounds for i in r["acquired"]]
        assert len(set(acquired)) == 16 and not set(acquired) & initial
        for head in ("feedforward", "introspective"):
            for split in ("clean", "noisy"):
                accs = [r["metrics"][head][split]["acc"] for r in rounds]
                assert all(0 <= a <= 1 for a in accs)
                area = np.trapezoid(accs, [10, 18, 26]) / 16
                assert curve["area"][head][split]["acc"] == pytest.approx(area)
    # Round 0 is shared; the rows of Table 2 are the acquiring network's own final accuracy.
    assert len({json.dumps(c["rounds"][0]["metrics"]) for c in saved["curves"]}) == 1
    bald_int = next(
        c for c in saved["curves"] if c["strategy"] == "bald" and c["source"] == "introspective"
    )
    final = bald_int["rounds"][-1]["metrics"]["introspective"]["noisy"]["acc"]
    assert saved["table"]["bald"]["INT"]["noisy"]["acc"] == final
    assert (run_dir / "active.png").stat().st_size > 0 and "| bald | INT |" in (
        run_dir / "active.md"
    ).read_text()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "complete"
    assert (run_dir / "logs" / "metrics.csv").is_file()


class _Poisoned(torch.utils.data.Dataset):
    """``base`` with the labels of every image outside ``keep`` replaced by a wrong class."""

    def __init__(self, base, keep: set[int]) -> None:
        self.base, self.keep = base, keep

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        image, label = self.base[i]
        return image, label if i in self.keep else (label + 1) % 10


def _curves(cfg, dm, dataset, monkeypatch, passes: list[tuple[int, int]]):
    import introspect.jobs.active as active_run
    from introspect.active.loop import Schedule, run_curves

    original = active_run.batch_outputs

    def counting(backbone, head, images, **kwargs):
        seen = []
        hook = backbone.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))
        try:
            return original(backbone, head, images, **kwargs)
        finally:
            hook.remove()
            assert seen == [len(images)]  # one backbone pass for features, logits, embeddings

    monkeypatch.setattr(active_run, "batch_outputs", counting)
    learner = make_learner(cfg, dm, Path(cfg.run.dir), dm.split("test"))
    outputs = learner.outputs

    def scored(models, pool, **kwargs):
        before = learner.backbone_passes
        out = outputs(models, pool, **kwargs)
        passes.append((learner.backbone_passes - before, len(pool.unlabelled)))
        assert len(out["ff_logits"]) == len(pool.unlabelled)
        return out

    learner.outputs = scored  # type: ignore[method-assign]
    pool = LabelPool(dataset, initial_indices(len(dataset), 10, seed=7))
    schedule = Schedule(10, 8, 2)
    return run_curves(learner, pool, schedule, ["margin", "badge"], ["introspective"], seed=0)


@pytest.mark.slow
def test_unacquired_labels_never_change_the_run(tmp_path: Path, monkeypatch, single_thread) -> None:
    from introspect.stages.stage1 import build_data

    cfg = load_config([*TINY, f"run.dir={tmp_path / 'run'}"])
    dm = build_data(train_settings(cfg).stage1)
    train = dm.split("train")
    passes: list[tuple[int, int]] = []
    clean = _curves(cfg, dm, train, monkeypatch, passes)
    # Each scoring sends every unlabelled pool image through the backbone exactly once.
    assert passes and all(done == pool for done, pool in passes)
    keep = set(initial_indices(len(train), 10, seed=7))
    keep |= {i for c in clean for r in c["rounds"] for i in r["acquired"]}
    poisoned_data = _Poisoned(train, keep)
    changed = sum(poisoned_data[i][1] != train[i][1] for i in range(len(train)))
    assert changed == len(train) - len(keep) > 1000
    poisoned = _curves(cfg, dm, poisoned_data, monkeypatch, [])
    assert json.dumps(poisoned) == json.dumps(clean)


def test_a_schedule_larger_than_the_pool_fails_before_any_work(tmp_path: Path) -> None:
    from introspect.jobs.active import ActiveError, ActiveSettings, run_active

    cfg = load_config([*TINY, "active.initial=5000", f"run.dir={tmp_path / 'run'}"])
    with pytest.raises(ActiveError, match="lower one of them"):
        run_active(ActiveSettings.from_config(cfg))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key", ["pool_size", "test_size"])
def test_a_subset_larger_than_its_split_fails_before_any_work(tmp_path: Path, key: str) -> None:
    from introspect.jobs.active import ActiveError, ActiveSettings, run_active

    cfg = load_config([*TINY, f"active.{key}=100000", f"run.dir={tmp_path / 'run'}"])
    with pytest.raises(ActiveError, match=rf"active\.{key}=100000 but the (train|test) split"):
        run_active(ActiveSettings.from_config(cfg))
    assert not (tmp_path / "run").exists()


def test_pool_and_test_subsets_are_one_fixed_draw_per_split() -> None:
    from torch.utils.data import Subset, TensorDataset

    from introspect.jobs.active import _subset

    data = TensorDataset(torch.arange(50), torch.arange(50) % 10)
    assert _subset(data, 0, seed=0, name="pool") is data
    pool = _subset(data, 20, seed=0, name="pool")
    assert isinstance(pool, Subset) and len(pool) == 20
    assert pool.indices == sorted(set(pool.indices)) and pool.indices[-1] < 50
    assert [int(pool[i][0]) for i in range(20)] == pool.indices
    assert _subset(data, 20, seed=0, name="pool").indices == pool.indices  # not the run seed
    assert _subset(data, 20, seed=1, name="pool").indices != pool.indices
    assert _subset(data, 20, seed=0, name="test").indices != pool.indices


def _fake_run(root: Path, seed: int, accs: dict[str, float]) -> Path:
    """An active.json with hand-written final accuracies (FF, INT) of one strategy."""
    run = root / f"seed{seed}"
    run.mkdir(parents=True)
    metrics = {
        head: {s: {"acc": accs[short], "ece": 0.1} for s in ("clean", "noisy")}
        for short, head in (("FF", "feedforward"), ("INT", "introspective"))
    }
    curves = [
        {
            "strategy": "margin",
            "source": source,
            "rounds": [{"round": 0, "labelled": 10, "acquired": [], "metrics": metrics}],
            "area": {h: {s: {"acc": m[s]["acc"]} for s in m} for h, m in metrics.items()},
        }
        for source in ("feedforward", "introspective")
    ]
    from introspect.report.active_report import table_two

    config = {"run": {"seed": seed, "name": f"s{seed}"}, "backbone": {"name": "small_cnn"}}
    results = {"run": {"seed": seed, "config": config, "seconds": 1.0}, "curves": curves}
    results["table"] = table_two(curves)
    (run / "active.json").write_text(json.dumps(results))
    (run / "status.json").write_text(json.dumps({"state": "complete"}))
    return run


@pytest.mark.slow
def test_compare_pools_seeds_of_active_runs(tmp_path: Path, monkeypatch) -> None:
    import wandb

    from introspect.jobs.compare import CompareError, compare

    logged: list[dict] = []

    class _Run:  # records what would reach W&B (a real offline run takes a minute here)
        def log(self, data: dict) -> None:
            logged.append(data)

        def finish(self) -> None:
            logged.append({"finished": True})

    monkeypatch.setattr(wandb, "init", lambda **kwargs: _Run())

    values = [(0.80, 0.84), (0.70, 0.71), (0.90, 0.95)]
    runs = [_fake_run(tmp_path, s, {"FF": ff, "INT": it}) for s, (ff, it) in enumerate(values)]
    report = compare(runs, tmp_path / "cmp", wandb=True)
    table = logged[0]["compare/active_table"]
    assert len(table.data) == 3 and logged[-1] == {"finished": True}  # FF, INT, INT-FF rows
    assert "compare/active_curves_0" in logged[0]
    table = report["groups"][0]["table"]["margin"]
    ff = np.array([v[0] for v in values])
    it = np.array([v[1] for v in values])
    assert table["FF"]["clean"]["acc"] == pytest.approx((ff.mean(), ff.std(ddof=1)))
    assert table["INT"]["noisy"]["acc"] == pytest.approx((it.mean(), it.std(ddof=1)))
    assert table["INT-FF"]["clean"]["acc"] == pytest.approx(
        ((it - ff).mean(), (it - ff).std(ddof=1))
    )
    assert (
        "80.0 ± 10.0" in report["markdown"] and (tmp_path / "cmp" / "active_curves_0.png").is_file()
    )
    # Both sources' fake curves end equal: no acquisition difference, no run with a gain.
    same = report["groups"][0]["acquisition"]["margin"]["FF"]["clean"]
    assert same["d_aulc"] == (0.0, 0.0) and (same["wins"], same["runs"]) == (0, 3)
    assert "Same evaluated network" in report["markdown"]
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "results.json").write_text("{}")
    with pytest.raises(CompareError, match="separately"):
        compare([runs[0], plain], tmp_path / "cmp2", wandb=False)


def _curve(strategy: str, source: str, final: dict[str, float], area: dict[str, float]) -> dict:
    """A curve whose evaluated heads (by short name) end at ``final`` with areas ``area``."""
    heads = {"FF": "feedforward", "INT": "introspective"}
    metrics = {
        heads[k]: {s: {"acc": v, "ece": 0.0} for s in ("clean", "noisy")} for k, v in final.items()
    }
    return {
        "strategy": strategy,
        "source": source,
        "rounds": [{"round": 1, "labelled": 20, "acquired": [], "metrics": metrics}],
        "area": {heads[k]: {s: {"acc": v} for s in ("clean", "noisy")} for k, v in area.items()},
    }


def test_acquisition_table_holds_the_evaluated_network_fixed() -> None:
    from introspect.report.compare_active import acquisition_table

    # Per run: (FF-acquired, INT-acquired) areas of the FF head; INT head areas = FF + 0.1.
    areas = [(0.50, 0.55), (0.60, 0.58), (0.40, 0.47)]
    finals = [(0.70, 0.72), (0.65, 0.69), (0.80, 0.79)]
    runs = [
        [
            _curve("random", "any", {"FF": 0.3, "INT": 0.3}, {"FF": 0.3, "INT": 0.3}),
            _curve(
                "margin", "feedforward", {"FF": ff_f, "INT": ff_f}, {"FF": ff_a, "INT": ff_a + 0.1}
            ),
            _curve(
                "margin",
                "introspective",
                {"FF": it_f, "INT": it_f},
                {"FF": it_a, "INT": it_a + 0.1},
            ),
        ]
        for (ff_a, it_a), (ff_f, it_f) in zip(areas, finals, strict=True)
    ]
    table = acquisition_table(runs)
    assert list(table) == ["margin"]  # random has one curve for both sources
    cell = table["margin"]["FF"]["noisy"]
    ff_a, it_a = np.array(areas).T
    ff_f, it_f = np.array(finals).T
    assert cell["ff_aulc"] == pytest.approx((ff_a.mean(), ff_a.std(ddof=1)))
    assert cell["d_aulc"] == pytest.approx(((it_a - ff_a).mean(), (it_a - ff_a).std(ddof=1)))
    assert cell["d_final"] == pytest.approx(((it_f - ff_f).mean(), (it_f - ff_f).std(ddof=1)))
    assert (cell["wins"], cell["runs"]) == (2, 3)
    assert table["margin"]["INT"]["clean"]["int_aulc"][0] == pytest.approx(it_a.mean() + 0.1)


@pytest.mark.slow
@pytest.mark.parametrize("warm", [True, False])
def test_stage1_starts_from_the_previous_round_only_when_warm(
    tmp_path: Path, monkeypatch, single_thread, warm: bool
) -> None:
    import introspect.jobs.active as active_run
    from introspect.stages.stage1 import build_data

    cfg = load_config([*TINY, f"active.warm_start={warm}", f"run.dir={tmp_path / 'run'}"])
    dm = build_data(train_settings(cfg).stage1)
    starts: list[dict[str, torch.Tensor]] = []
    original = active_run.FeedForwardClassifier

    def recording(backbone, **kwargs):
        starts.append({k: v.clone() for k, v in backbone.state_dict().items()})
        return original(backbone, **kwargs)

    monkeypatch.setattr(active_run, "FeedForwardClassifier", recording)
    learner = make_learner(cfg, dm, tmp_path, dm.split("test"))
    train = dm.split("train")
    pool = LabelPool(train, initial_indices(len(train), 10, seed=0))
    first = learner.fit(pool, None, "round0")
    pool.label(pool.unlabelled[:5])
    learner.fit(pool, first, "round1")
    trained = first.backbone.state_dict()
    fresh = learner.new_backbone().state_dict()
    assert all(torch.equal(starts[0][k], fresh[k]) for k in fresh)
    expected = trained if warm else fresh
    assert all(torch.equal(starts[1][k], expected[k].cpu()) for k in expected)
    assert not all(torch.equal(trained[k].cpu(), fresh[k]) for k in fresh)  # round 0 trained
