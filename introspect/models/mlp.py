"""The stage-2 network ``H``: a configurable multi-layer perceptron."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}


class MLP(nn.Sequential):
    """``in_dim -> hidden[0] -> ... -> num_classes`` with activation and dropout between layers.

    Two hidden widths (the default of the stage-2 config) make the paper's three linear layers.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden: Sequence[int] = (256, 128),
        *,
        dropout: float = 0.0,
        activation: str = "relu",
        first: nn.Module | None = None,
    ) -> None:
        """``first``: the first layer (``in_dim -> hidden[0]``) when not ``nn.Linear``."""
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        width = in_dim
        for i, h in enumerate(hidden):
            layer = first if i == 0 and first is not None else nn.Linear(width, h)
            layers += [layer, ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        last = first if not hidden and first is not None else nn.Linear(width, num_classes)
        layers.append(last)
        super().__init__(*layers)
