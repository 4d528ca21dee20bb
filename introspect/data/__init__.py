"""Image data: sources, deterministic splits, the Lightning datamodule and augmentations."""

from introspect.data.augment import AUGMENTATIONS, build_augmentation
from introspect.data.errors import DataError
from introspect.data.images import TransformDataset
from introspect.data.module import ImageDataModule, build_datamodule

__all__ = [
    "AUGMENTATIONS",
    "DataError",
    "ImageDataModule",
    "TransformDataset",
    "build_augmentation",
    "build_datamodule",
]
