"""Image quality assessment with introspection: quality sets (proxy and released databases),
full-reference baselines, the quality model and its regression introspective features."""

from __future__ import annotations

import os
from collections.abc import Sequence

from introspect.quality.databases import DATABASES
from introspect.quality.dataset import QualityDataError, QualitySet, split_by_reference
from introspect.quality.proxy import build_proxy_set
from introspect.quality.reference import FULL_REFERENCE, full_reference_scores


def load_quality_set(
    database: str,
    path: str | None = None,
    *,
    references: Sequence[str] = (),
    distortions: Sequence[str] = (),
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    image_size: int = 128,
    label: str = "ms_ssim",
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> QualitySet:
    """The proxy set (``database="proxy"``, built from the other arguments) or a released
    database read from ``path`` (``tid2013``, ``kadid10k``, ``livemd``)."""
    if database == "proxy":
        return build_proxy_set(
            references,
            distortions,
            severities,
            size=image_size,
            label=label,
            seed=seed,
            cache_dir=cache_dir,
        )
    if database not in DATABASES:
        valid = ", ".join(["proxy", *DATABASES])
        raise QualityDataError(f"unknown quality database {database!r}; valid: {valid}")
    return DATABASES[database](path)


__all__ = [
    "DATABASES",
    "FULL_REFERENCE",
    "QualityDataError",
    "QualitySet",
    "build_proxy_set",
    "full_reference_scores",
    "load_quality_set",
    "split_by_reference",
]
