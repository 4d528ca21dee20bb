"""Full-reference quality metrics (from piq) of distorted images against their references."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from introspect.quality.dataset import QualitySet


@dataclass(frozen=True)
class FullReferenceMetric:
    """A full-reference metric: ``fn(distorted, reference) -> (B,)`` for images in ``[0, 1]``."""

    title: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    higher_is_better: bool = True


def _window(x: torch.Tensor) -> int:
    """The 11x11 Gaussian window of (MS/IW-)SSIM when the image has room for five scales,
    else 7x7 (images of 97-160 pixels)."""
    return 11 if min(x.shape[-2:]) >= 161 else 7


def _piq(name: str, **options: object) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import piq

        kwargs = dict(options)
        if name in ("multi_scale_ssim", "information_weighted_ssim"):
            kwargs["kernel_size"] = _window(x)
        return getattr(piq, name)(x, y, data_range=1.0, reduction="none", **kwargs)

    return fn


FULL_REFERENCE: dict[str, FullReferenceMetric] = {
    "psnr": FullReferenceMetric("PSNR", _piq("psnr")),
    "ssim": FullReferenceMetric("SSIM", _piq("ssim")),
    "ms_ssim": FullReferenceMetric("MS-SSIM", _piq("multi_scale_ssim")),
    "iw_ssim": FullReferenceMetric("IW-SSIM", _piq("information_weighted_ssim")),
    "vif": FullReferenceMetric("VIFp", _piq("vif_p")),
    "fsimc": FullReferenceMetric("FSIMc", _piq("fsim", chromatic=True)),
    "srsim": FullReferenceMetric("SR-SIM", _piq("srsim")),
    "gmsd": FullReferenceMetric("GMSD", _piq("gmsd"), higher_is_better=False),
    "ms_gmsd": FullReferenceMetric("MS-GMSD", _piq("multi_scale_gmsd"), higher_is_better=False),
    "vsi": FullReferenceMetric("VSI", _piq("vsi")),
    "haarpsi": FullReferenceMetric("HaarPSI", _piq("haarpsi")),
    "mdsi": FullReferenceMetric("MDSI", _piq("mdsi"), higher_is_better=False),
    "dss": FullReferenceMetric("DSS", _piq("dss")),
}


def full_reference_scores(
    dataset: QualitySet, indices: Iterable[int], name: str, *, batch_size: int = 64
) -> np.ndarray:
    """Metric ``name`` of the distorted images ``indices`` against their references (float64)."""
    if name not in FULL_REFERENCE:
        raise ValueError(
            f"unknown full-reference metric {name!r}; valid: {', '.join(FULL_REFERENCE)}"
        )
    metric = FULL_REFERENCE[name]
    order = list(indices)
    out = []
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            values = metric.fn(dataset.images(chunk), dataset.references(chunk))
            out.append(values.reshape(len(chunk)).double())
    return torch.cat(out).numpy() if out else np.zeros(0)
