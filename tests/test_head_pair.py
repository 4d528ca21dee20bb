"""Heads trained together (``HeadPair`` over ``ZippedBatches``) against each head trained alone
through its own ``Trainer.fit`` (the reference): same weights, same logged metrics; and the
random streams and zipped batches they rely on."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch import nn

from introspect.data.batches import IndexedBatches, ZippedBatches
from introspect.data.seeding import RngStream
from introspect.gradients import GradientFactors
from introspect.models.pair import HeadPair
from introspect.models.stage2 import IntrospectiveClassifier, ProbeClassifier

pytestmark = pytest.mark.usefixtures("single_thread")

N, D, ROWS, VAL = 4, 6, 150, 40


class Backbone(nn.Module):
    """The heads read only the backbone's head shape (features are given)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(D, N)


def _data(rows: int, seed: int) -> tuple[GradientFactors, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(rows, N, generator=g) * 2, dim=1)
    h = torch.rand(rows, D, generator=g)
    factors = GradientFactors.from_parts((N * probs - 1)[:, None, :], h, normalize="l2")
    return factors, h / h.norm(dim=1, keepdim=True), torch.randint(0, N, (rows,), generator=g)


def _head(kind: str, seed: int, normalize: str, optim: dict):
    """Head ``kind`` as ``runs.stage2`` builds it: right after ``seed_everything(seed)``."""
    L.seed_everything(seed, verbose=False)
    common = {"num_classes": N, "hidden": (12, 8), "dropout": 0.3, "optim": optim}
    if kind == "introspective":
        return IntrospectiveClassifier(
            Backbone(), feature_options={"normalize": normalize}, in_dim=N * D, **common
        )
    return ProbeClassifier(Backbone(), in_dim=D, normalize=normalize, **common)


def _heads(seed: int, normalize: str, optim: dict) -> list:
    """Both heads, each with the random stream it starts from (taken right after building)."""
    return [
        (_head(kind, seed, normalize, optim), RngStream(seed))
        for kind in ("introspective", "control")
    ]


class Written(Logger):
    """Keeps what a trainer writes: ``(step, name) -> value``."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[tuple[int, str], float] = {}

    @property
    def name(self) -> str:
        return "written"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.update({(int(step or 0), k): v for k, v in metrics.items() if k != "epoch"})


def _trainer(epochs: int, clip: float | None, written: Written) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, logger=written, log_every_n_steps=2,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, gradient_clip_val=clip,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("normalize", "optim", "clip"),
    [
        ("l2", {"name": "adamw", "lr": 3e-2, "weight_decay": 1e-3}, None),
        ("standardize", {"name": "sgd", "lr": 0.1, "momentum": 0.9, "schedule": "none"}, 0.05),
    ],
)
def test_heads_trained_together_equal_heads_trained_alone(normalize, optim, clip) -> None:
    factors, penult, labels = _data(ROWS, 0)
    val_factors, val_penult, val_labels = _data(VAL, 1)
    inputs = {"introspective": (factors, val_factors), "control": (penult, val_penult)}
    epochs, seed = 3, 7
    warnings.simplefilter("ignore")

    def loaders(head):
        x, val_x = inputs[head.kind]
        head.fit_standardizer(x)
        return (
            IndexedBatches(x, labels, batch_size=32, shuffle=True),
            IndexedBatches(val_x, val_labels, batch_size=16),
        )

    # The reference: each head built and trained on its own, one after the other.
    alone, logged, written_alone = [], {}, Written()
    for kind in ("introspective", "control"):
        head = _head(kind, seed, normalize, optim)
        train, val = loaders(head)
        trainer = _trainer(epochs, clip, written_alone)
        trainer.fit(head, train_dataloaders=train, val_dataloaders=val)
        alone.append(head)
        logged.update(trainer.callback_metrics)

    together = _heads(seed, normalize, optim)
    heads, streams = [h for h, _ in together], [s for _, s in together]
    pairs = [loaders(h) for h in heads]
    written = Written()
    trainer = _trainer(epochs, None, written)
    trainer.fit(
        HeadPair(heads, streams, gradient_clip_val=clip),
        train_dataloaders=ZippedBatches([p[0] for p in pairs], streams),
        val_dataloaders=ZippedBatches([p[1] for p in pairs], streams),
    )
    untrained = [h for h, _ in _heads(seed, normalize, optim)]
    for ref, head, start in zip(alone, heads, untrained, strict=True):
        ref_state, state = ref.head_state(), head.head_state()
        # Training moved the weights (the comparison is not between two untrained heads).
        assert not torch.allclose(state["head.0.weight"], start.head_state()["head.0.weight"])
        assert ref_state.keys() == state.keys()
        for key in ref_state:
            assert torch.equal(state[key], ref_state[key]), key
    got = trainer.callback_metrics
    names = [f"{k}/{s}/{m}" for k in ("introspective", "control") for s in ("train", "val")
             for m in ("acc", "loss")]  # fmt: skip
    for name in names:
        assert name in got and name in logged, name
        torch.testing.assert_close(got[name], logged[name], rtol=1e-5, atol=1e-6)
    # The loggers got the same values at the same steps (both heads' rows written together).
    assert written.rows.keys() == written_alone.rows.keys()
    assert {name for _, name in written.rows} == set(names)
    for key, value in written_alone.rows.items():
        assert written.rows[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_a_stream_draws_what_its_state_would_and_leaves_the_outer_state_alone() -> None:
    torch.manual_seed(3)
    stream = RngStream(0)
    expected = torch.rand(5), torch.randperm(9)
    torch.manual_seed(11)
    outer = torch.rand(4)
    torch.manual_seed(11)
    with stream:
        first = torch.rand(5)
    assert torch.equal(torch.rand(4), outer)  # the outer stream is where it was
    with stream:
        second = torch.randperm(9)
    torch.testing.assert_close(first, expected[0], rtol=0, atol=0)
    assert torch.equal(second, expected[1])


def test_zipped_batches_give_each_source_the_order_it_draws_alone() -> None:
    x = torch.arange(20.0)[:, None]
    references = []
    streams = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        streams.append(RngStream(0))
        batches = IndexedBatches(x, batch_size=6, shuffle=True)
        references.append([[b[0] for b in batches] for _ in range(2)])  # two epochs
    sources = [IndexedBatches(x, batch_size=6, shuffle=True) for _ in (1, 2)]
    zipped = ZippedBatches(sources, streams)
    assert len(zipped) == 4
    for epoch in range(2):
        steps = list(zipped)
        for i in range(2):
            got = [step[i][0] for step in steps]
            assert all(torch.equal(a, b) for a, b in zip(got, references[i][epoch], strict=True))
    # The two sources were shuffled differently (their streams differ).
    assert not torch.equal(references[0][0][0], references[1][0][0])
    with pytest.raises(ValueError, match="same number of batches"):
        ZippedBatches([sources[0], IndexedBatches(x[:7], batch_size=6)])
