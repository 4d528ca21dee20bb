"""The embedded proxy quality set: scikit-image sample images distorted with the project's
corruption generator at five levels and scored by a full-reference metric (no human opinions).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from introspect.quality.dataset import QualityDataError, QualitySet
from introspect.quality.reference import FULL_REFERENCE, full_reference_scores

# Natural photographs, micrographs and textures bundled with scikit-image (no download).
PROXY_REFERENCES = (
    "astronaut",
    "camera",
    "coffee",
    "chelsea",
    "rocket",
    "coins",
    "moon",
    "page",
    "hubble_deep_field",
    "immunohistochemistry",
    "gravel",
    "clock",
)
_VERSION = 1  # bump when the construction changes, so stale caches are not reused


def reference_image(name: str, size: int) -> torch.Tensor:
    """The scikit-image sample ``name``: centre square crop, resized (antialiased) to ``size``,
    as a ``(3, size, size)`` float tensor in ``[0, 1]``."""
    import skimage.data

    loader = getattr(skimage.data, name, None)
    if loader is None or name.startswith("_"):
        raise QualityDataError(f"scikit-image has no sample image {name!r}")
    try:
        array = loader()
    except Exception as err:  # a sample that needs a download (pooch) is not embedded
        raise QualityDataError(f"scikit-image sample {name!r} is not available offline") from err
    image = torch.from_numpy(np.asarray(array, dtype=np.float64))
    if image.ndim == 2:
        image = image[..., None].expand(-1, -1, 3)
    image = image[..., :3].permute(2, 0, 1).float()
    if np.issubdtype(np.asarray(array).dtype, np.integer):
        image = image / 255.0
    side = min(image.shape[1:])
    top, left = (image.shape[1] - side) // 2, (image.shape[2] - side) // 2
    square = image[:, top : top + side, left : left + side]
    resized = F.interpolate(square[None], size=(size, size), mode="bilinear", antialias=True)
    return resized[0].clamp(0.0, 1.0)


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images * 255.0).round().clamp(0, 255).to(torch.uint8)


def build_proxy_set(
    references: Sequence[str] = PROXY_REFERENCES,
    distortions: Sequence[str] = ("gaussian_noise", "defocus_blur", "jpeg_compression"),
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    *,
    size: int = 128,
    label: str = "ms_ssim",
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> QualitySet:
    """Every reference distorted by every distortion at every severity (seeded), quantized to
    8 bits, and scored by the full-reference metric ``label`` against its reference.

    With ``cache_dir`` the set is stored there as an ``.npz`` named by a digest of the
    arguments and reused when present.
    """
    from introspect.corruptions.transforms import corrupt

    if label not in FULL_REFERENCE:
        raise QualityDataError(
            f"unknown label metric {label!r}; valid: {', '.join(FULL_REFERENCE)}"
        )
    recipe = {
        "references": list(references),
        "distortions": list(distortions),
        "severities": [int(s) for s in severities],
        "size": int(size),
        "label": label,
        "seed": int(seed),
        "version": _VERSION,
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(cache_dir).expanduser() / f"proxy-{digest}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        return _from_arrays(dict(np.load(cache, allow_pickle=False)), recipe)

    refs = _to_uint8(torch.stack([reference_image(name, size) for name in references]))
    ref_float = refs.float() / 255.0
    pixels, ref_index, names, levels = [], [], [], []
    for d, distortion in enumerate(distortions):
        for severity in severities:
            out = corrupt(ref_float, distortion, int(severity), seed=seed + 1000 * d + severity)
            pixels.append(_to_uint8(out))
            ref_index += range(len(references))
            names += [distortion] * len(references)
            levels += [int(severity)] * len(references)
    arrays = {
        "pixels": torch.cat(pixels).numpy(),
        "reference_pixels": refs.numpy(),
        "reference_index": np.asarray(ref_index, dtype=np.int64),
        "distortions": np.asarray(names),
        "levels": np.asarray(levels, dtype=np.int64),
    }
    partial = _from_arrays({**arrays, "scores": np.zeros(len(names))}, recipe)
    arrays["scores"] = full_reference_scores(partial, range(len(partial)), label)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".npz")
        os.close(fd)
        try:
            np.savez(tmp, **arrays)
            os.replace(tmp, cache)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return _from_arrays(arrays, recipe)


def _from_arrays(arrays: dict[str, np.ndarray], recipe: dict) -> QualitySet:
    return QualitySet(
        name="proxy",
        scores=np.asarray(arrays["scores"], dtype=np.float64),
        reference_index=np.asarray(arrays["reference_index"], dtype=np.int64),
        distortions=[str(d) for d in arrays["distortions"]],
        levels=np.asarray(arrays["levels"], dtype=np.int64),
        score_name=f"proxy {recipe['label']}",
        higher_is_better=FULL_REFERENCE[recipe["label"]].higher_is_better,
        proxy=True,
        pixels=torch.from_numpy(np.asarray(arrays["pixels"], dtype=np.uint8)),
        reference_pixels=torch.from_numpy(np.asarray(arrays["reference_pixels"], dtype=np.uint8)),
    )
