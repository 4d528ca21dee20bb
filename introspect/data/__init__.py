"""Image data: sources, deterministic splits, the Lightning datamodule and augmentations.

The names below are imported on first use, so that importing one torch-free submodule
(e.g. ``introspect.data.cells``) does not import torch."""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the submodule that defines it.
_EXPORTS: dict[str, str] = {
    "AUGMENTATIONS": "introspect.data.augment",
    "DataError": "introspect.data.errors",
    "ImageDataModule": "introspect.data.module",
    "TransformDataset": "introspect.data.images",
    "build_augmentation": "introspect.data.augment",
    "build_datamodule": "introspect.data.module",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names, imported or not."""
    return sorted(set(globals()) | set(_EXPORTS))
