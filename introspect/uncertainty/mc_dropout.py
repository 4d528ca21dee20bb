"""MC dropout (Gal & Ghahramani 2016) of a frozen backbone: ``S`` stochastic predictions with
dropout active at test time at the input of the classification head (the penultimate
activations ``h``, probability ``p``) and in every dropout layer the backbone has.

When the backbone has no dropout layer of its own, the ``S`` predictions differ only after
``h``: ``z_s = W (m_s ⊙ h) / (1 − p) + b`` with Bernoulli masks ``m_s``, so one backbone pass
serves all of them (pass its logits and ``h`` in). Otherwise every sample needs its own
backbone pass with those layers switched to training mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from introspect.backbones.head import forward_with_head_input
from introspect.data.seeding import derive_seed
from introspect.uncertainty.measures import expected_entropy, mutual_information

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def dropout_layers(model: nn.Module) -> list[nn.Module]:
    """The dropout modules of ``model`` with a positive probability."""
    return [m for m in model.modules() if isinstance(m, _DROPOUT) and m.p > 0]


@contextlib.contextmanager
def _active(layers: list[nn.Module]) -> Iterator[None]:
    modes = [m.training for m in layers]
    try:
        for m in layers:
            m.train()
        yield
    finally:
        for m, mode in zip(layers, modes, strict=True):
            m.train(mode)


class MCDropout:
    """``samples`` stochastic predictions of a backbone with dropout ``p`` at its head input.

    ``seed`` fixes the draws: the same ``(seed, key)`` gives the same masks for the same batch.
    """

    def __init__(self, samples: int, p: float, *, seed: int = 0) -> None:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be a positive integer, got {samples!r}")
        if not 0.0 <= p < 1.0:
            raise ValueError(f"p must be in [0, 1), got {p}")
        self.samples = samples
        self.p = float(p)
        self.seed = seed

    def __repr__(self) -> str:
        return f"MCDropout(samples={self.samples}, p={self.p}, seed={self.seed})"

    def passes_needed(self, backbone: nn.Module) -> int:
        """Backbone passes per batch: 1 when dropout sits only at the head input, else S."""
        return self.samples if dropout_layers(backbone) else 1

    def sample_logits(
        self,
        backbone: nn.Module,
        images: torch.Tensor,
        *,
        penultimate: torch.Tensor | None = None,
        key: int = 0,
        head: nn.Linear | None = None,
    ) -> torch.Tensor:
        """``(S, B, N)`` logits of the ``S`` dropout samples of ``images``.

        ``head`` is the backbone's last ``nn.Linear`` (default ``backbone.head``).
        ``penultimate`` (the head input of an ordinary eval-mode pass on ``images``) is reused
        when the backbone has no dropout layer, so no backbone pass runs here; ``key`` varies
        the draws between batches.
        """
        head = head if head is not None else backbone.head
        layers = dropout_layers(backbone)
        device = images.device
        gen = torch.Generator(device=device).manual_seed(derive_seed(self.seed, key))
        with torch.no_grad():
            if not layers:
                if penultimate is None:
                    _, penultimate = forward_with_head_input(backbone, head, images)
                h = penultimate.detach().flatten(1).expand(self.samples, -1, -1)
                return F.linear(self._drop(h, gen), head.weight, head.bias)
            out = []
            fork = [device] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=fork), _active(layers):
                torch.manual_seed(derive_seed(self.seed, key, "layers"))
                for _ in range(self.samples):
                    _, h = forward_with_head_input(backbone, head, images)
                    out.append(F.linear(self._drop(h.flatten(1), gen), head.weight, head.bias))
            return torch.stack(out)

    def _drop(self, h: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.p == 0:
            return h
        keep = torch.rand(h.shape, generator=gen, device=h.device, dtype=h.dtype) >= self.p
        return h * keep / (1.0 - self.p)

    @staticmethod
    def scores(logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Confidence scores (higher = more certain) of sampled logits ``(S, B, N)`` (from
        ``sample_logits``): ``mcd_bald`` (negated mutual information) and
        ``mcd_expected_entropy`` (negated), ``(B,)`` each."""
        probs = logits.softmax(-1)
        return {
            "mcd_bald": -mutual_information(probs),
            "mcd_expected_entropy": -expected_entropy(probs),
        }
