"""Image data: sources, deterministic splits, the Lightning datamodule and augmentations.

The names below are imported on first use, so that importing one torch-free submodule
(e.g. ``introspect.data.errors``) does not import torch."""

from __future__ import annotations

from introspect.lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
