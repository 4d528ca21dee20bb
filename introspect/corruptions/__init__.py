"""Image corruptions: the CIFAR-10-C common corruptions and CURE-TSR challenge types as batched
torch operations, and the ``<corruption>/<severity>`` names of evaluation cells.

``is_cell`` is torch-free; the corruption functions (and torch) load on first use."""

from __future__ import annotations

from introspect.lazy import lazy_exports

_TRANSFORMS = "introspect.corruptions.transforms"
_NAMES_TO_MODULES = {"is_cell": "introspect.corruptions.cells"} | dict.fromkeys(
    ("ALL_NAMES", "CURE_NAMES", "EXTRA_NAMES", "NAMES", "corrupt"), _TRANSFORMS
)

__all__ = sorted(_NAMES_TO_MODULES)

__getattr__, __dir__ = lazy_exports(__name__, _NAMES_TO_MODULES)
