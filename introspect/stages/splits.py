"""The evaluation splits of a run: ``clean``, ``extra`` named splits and corruption cells."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch.utils.data import ConcatDataset, Dataset

from introspect.config.schema import DataConfig, EvalConfig, SourceSplitConfig
from introspect.data import DataError, ImageDataModule, build_datamodule
from introspect.data.module import SPLITS
from introspect.data.shifted import check_cells, corrupted_splits, load_official

_RESERVED = ("clean",)


def _default_names(names: list[str]) -> bool:
    return names == [str(k) for k in range(len(names))]


def read_source(
    data: DataConfig, entry: SourceSplitConfig, where: str, *, image_size: int | None = None
) -> tuple[ImageDataModule, Dataset]:
    """The datamodule of another source ``entry`` (``source``/``path``/``test_path``/``split``)
    read with the run's data settings ``data`` (``image_size`` overriding), and its ``split``:
    ``train``, ``val``, ``test`` or ``all`` of its images. ``DataError`` messages start with
    ``where``."""
    if entry.split not in (*SPLITS, "all"):
        raise DataError(
            f"{where}.split={entry.split!r} is not a split; valid: {', '.join(SPLITS)}, all"
        )
    settings = replace(
        data,  # a new record: the run's own settings stay as they are
        source=entry.source,
        path=entry.path,
        test_path=entry.test_path,
        # Its test split is all of its test images: the run's val_from=test does not carve it.
        val_from="train",
        train_limit=None,  # the run's smoke-run limit is for its own training split
    )
    if image_size is not None:
        settings = replace(settings, image_size=image_size)
    try:
        other = build_datamodule(settings)
        other.setup()
        if entry.split == "all":
            dataset: Dataset = ConcatDataset([other.split(s) for s in SPLITS])
        else:
            dataset = other.split(entry.split)
    except DataError as err:
        raise DataError(f"{where}: {err}") from None
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise DataError(f"{where}: its {entry.split} split is empty")
    return other, dataset


def extra_split(
    data: DataConfig, entry: SourceSplitConfig, dm: ImageDataModule, name: str
) -> Dataset:
    """The ``eval.extra.<name>`` split ``entry``: another source, read with the run's data
    settings ``data``.

    Raises ``DataError`` naming the fix when its classes or image size differ from the run's.
    """
    where = f"eval.extra.{name}"
    if name in _RESERVED or "/" in name or not name:
        raise DataError(f"{where}: the name must be non-empty, not 'clean' and contain no '/'")
    other, dataset = read_source(data, entry, where)
    ours, theirs = dm.class_names, other.class_names
    if len(ours) != len(theirs):
        raise DataError(
            f"{where} has {len(theirs)} classes but the run's data has {len(ours)}; an extra "
            "split must use the same classes in the same label order"
        )
    if ours != theirs and not (_default_names(ours) or _default_names(theirs)):
        raise DataError(
            f"{where} has classes {theirs} but the run's data has {ours}; an extra split must "
            "use the same classes in the same label order"
        )
    if other.image_shape != dm.image_shape:
        raise DataError(
            f"{where} images are {other.image_shape[1:]} but the run's are "
            f"{dm.image_shape[1:]}; set data.image_size to resize both"
        )
    return dataset


def evaluation_splits(
    e: EvalConfig, data: DataConfig, dm: ImageDataModule, device: torch.device | str = "cpu"
) -> dict[str, Dataset]:
    """``clean`` (the test split of ``dm``, read with ``data``), every extra split of ``e``,
    then every configured
    ``<corruption>/<severity>`` cell, generated on the fly on ``device`` or read from the
    official arrays. Everything is checked here, before any work, so bad settings fail early.
    """
    test = dm.split("test")
    splits: dict[str, Dataset] = {"clean": test} if e.clean else {}
    for name, entry in e.extra.items():
        splits[str(name)] = extra_split(data, entry, dm, str(name))
    if e.corruptions:
        if e.chunk_size < 1:
            raise DataError(f"eval.chunk_size={e.chunk_size} must be a positive integer")
        check_cells(list(e.corruptions), list(e.severities))
        if e.source == "official":
            if e.official_dir is None:
                raise DataError("eval.source=official needs eval.official_dir (the .npy folder)")
            official = load_official(
                e.official_dir, e.corruptions, e.severities, num_classes=dm.num_classes
            )
            cells: dict[str, Dataset] = dict(official)
        else:
            if e.official_dir is not None:
                raise DataError(
                    "eval.official_dir is only read with eval.source=official; set that or "
                    "remove eval.official_dir"
                )
            # Worker processes cannot share a CUDA device: corrupt there only in the main one.
            where = device if data.num_workers == 0 else "cpu"
            cells = dict(
                corrupted_splits(
                    test,
                    e.corruptions,
                    e.severities,
                    seed=e.seed,
                    chunk_size=e.chunk_size,
                    cache_dir=e.cache_dir,
                    device=where,
                )
            )
        splits |= cells
    if not splits:
        raise DataError(
            "nothing to evaluate: set eval.clean=true, list eval.corruptions or add eval.extra"
        )
    return splits
