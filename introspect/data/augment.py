"""Training augmentations of float RGB images in [0, 1]: per sample (3, H, W) for stage 1, and
per batch (B, 3, H, W) for stage-2 feature extraction, where image ``i`` of a batch draws its
randomness from its own generator (seeded by the run seed, the pass and the image's index), so
an augmented image does not depend on the batch it is part of."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import transforms as T
from torchvision.transforms import functional as TF1
from torchvision.transforms.v2 import functional as TF

from introspect.data.errors import DataError
from introspect.data.seeding import derive_seed

AUGMENTATIONS = ("none", "standard", "gaussian_noise", "augmix")

# AugMix's operations without those overlapping CIFAR-10-C's corruptions (torchvision's
# ``all_ops=False`` set), in the order of torchvision's augmentation space.
AUGMIX_OPS = (
    "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "posterize", "solarize",
    "autocontrast", "equalize",
)  # fmt: skip
_GEOMETRIC = frozenset({"shear_x", "shear_y", "translate_x", "translate_y", "rotate"})
AUGMIX_WIDTH = 3  # chains mixed per image
AUGMIX_MAX_DEPTH = 3  # each chain applies 1..3 operations
_MAGNITUDE_BINS = 10  # torchvision's magnitude grid; severity s picks among its first s bins
# Uniform draws per image: the skip weight, one per chain weight, then per chain its depth and
# per step (operation, magnitude bin, sign).
_AUGMIX_DRAWS = 1 + AUGMIX_WIDTH + AUGMIX_WIDTH * (1 + 3 * AUGMIX_MAX_DEPTH)


def image_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image, seeded with ``derive_seed(seed, index)``: the same stream as
    :class:`introspect.data.images.SeededTransformDataset` gives item ``index``."""
    return [torch.Generator().manual_seed(derive_seed(seed, int(i))) for i in indices]


def to_uint8(images: Tensor) -> Tensor:
    """Float images in [0, 1] rounded to uint8 levels."""
    return (images * 255.0).round_().clamp_(0, 255).to(torch.uint8)


class GaussianNoise:
    """Add i.i.d. N(0, std^2) noise to every pixel, then clip to [0, 1]."""

    def __init__(self, std: float) -> None:
        self.std = std

    def __call__(self, image: Tensor) -> Tensor:
        return (image + self.std * torch.randn_like(image)).clamp_(0.0, 1.0)

    def __repr__(self) -> str:
        return f"GaussianNoise(std={self.std})"


@dataclass(frozen=True)
class AugMixParams:
    """The random choices of AugMix for B images (``C = AUGMIX_WIDTH`` chains of up to
    ``S = AUGMIX_MAX_DEPTH`` steps).

    ``skip``: (B,) weight of the original image; ``weights``: (B, C) weights of the chains
    (``skip + weights.sum(1) == 1``); ``depth``: (B, C) steps applied per chain (1..S); ``ops``:
    (B, C, S) indices into ``AUGMIX_OPS``; ``magnitudes``: (B, C, S) signed float magnitudes
    (torchvision's units: shear factor, pixels, degrees, bits, threshold; unused for
    autocontrast and equalize).
    """

    skip: Tensor
    weights: Tensor
    depth: Tensor
    ops: Tensor
    magnitudes: Tensor


def augmix_magnitude_table(severity: int, image_size: tuple[int, int]) -> Tensor:
    """(len(AUGMIX_OPS), severity) magnitudes each operation can take at ``severity`` (the
    first ``severity`` of torchvision AugMix's ten bins), before a random sign."""
    height, width = image_size
    n = _MAGNITUDE_BINS

    def spaced(stop: float) -> Tensor:  # float32 grids, as torchvision's
        return torch.linspace(0.0, stop, n)

    table = {
        "shear_x": spaced(0.3),
        "shear_y": spaced(0.3),
        "translate_x": spaced(width / 3.0),
        "translate_y": spaced(height / 3.0),
        "rotate": spaced(30.0),
        "posterize": 4 - (torch.arange(n) / ((n - 1) / 4)).round(),
        "solarize": torch.linspace(255.0, 0.0, n),
        "autocontrast": torch.zeros(n),
        "equalize": torch.zeros(n),
    }
    return torch.stack([table[op] for op in AUGMIX_OPS])[:, :severity].double()


_SIGNED = torch.tensor([op in _GEOMETRIC for op in AUGMIX_OPS])


def draw_augmix_params(
    uniforms: Tensor, severity: int, image_size: tuple[int, int]
) -> AugMixParams:
    """AugMix's choices from ``uniforms`` (B, ``_AUGMIX_DRAWS``) of U[0, 1) draws, one row per
    image: Beta(1, 1) skip weight, Dirichlet(1, 1, 1) chain weights (normalized exponentials)
    scaled by ``1 - skip``, depth, operation, magnitude bin and sign uniformly at random."""
    b = uniforms.shape[0]
    u = uniforms.to(torch.float64)
    skip = u[:, 0]
    gammas = -torch.log1p(-u[:, 1 : 1 + AUGMIX_WIDTH])  # Exponential(1) = Gamma(1)
    weights = gammas / gammas.sum(1, keepdim=True) * (1 - skip)[:, None]
    rest = u[:, 1 + AUGMIX_WIDTH :].reshape(b, AUGMIX_WIDTH, 1 + 3 * AUGMIX_MAX_DEPTH)
    depth = (rest[:, :, 0] * AUGMIX_MAX_DEPTH).long().clamp_(max=AUGMIX_MAX_DEPTH - 1) + 1
    steps = rest[:, :, 1:].reshape(b, AUGMIX_WIDTH, AUGMIX_MAX_DEPTH, 3)
    ops = (steps[..., 0] * len(AUGMIX_OPS)).long().clamp_(max=len(AUGMIX_OPS) - 1)
    bins = (steps[..., 1] * severity).long().clamp_(max=severity - 1)
    table = augmix_magnitude_table(severity, image_size)
    sign = torch.where((steps[..., 2] < 0.5) & _SIGNED[ops], -1.0, 1.0).to(torch.float64)
    magnitudes = table[ops, bins] * sign
    return AugMixParams(
        skip=skip.float(), weights=weights.float(), depth=depth, ops=ops, magnitudes=magnitudes
    )


def _affine_matrices(op: Tensor, magnitude: Tensor, height: int, width: int) -> Tensor:
    """(K, 2, 3) float32 inverse affine matrices (output pixel -> input pixel, coordinates
    centred on the image) of geometric AugMix operations, as torchvision's ``affine`` and
    ``rotate`` build them for tensors (shears about the top-left corner, rotation about the
    centre, translations rounded towards zero)."""
    names = [AUGMIX_OPS[int(k)] for k in op]
    m = magnitude.to(torch.float64)
    zero = torch.zeros_like(m)
    is_op = {name: torch.tensor([n == name for n in names]) for name in _GEOMETRIC}
    # Rotation by -angle (torchvision's rotate turns counter-clockwise); shear angles in radians.
    rot = torch.where(is_op["rotate"], -torch.deg2rad(m), zero)
    sx = torch.where(is_op["shear_x"], torch.atan(m), zero)
    sy = torch.where(is_op["shear_y"], torch.atan(m), zero)
    tx = torch.where(is_op["translate_x"], torch.trunc(m), zero)
    ty = torch.where(is_op["translate_y"], torch.trunc(m), zero)
    shear = is_op["shear_x"] | is_op["shear_y"]
    # Shears are taken about pixel (0, 0), i.e. (-w/2, -h/2) in centred coordinates.
    cx = torch.where(shear, torch.full_like(m, -0.5 * width), zero)
    cy = torch.where(shear, torch.full_like(m, -0.5 * height), zero)
    # Forward map [[a, b], [c, d]] = R(rot) SHy(sy) SHx(sx); its inverse is [[d, -b], [-c, a]].
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -torch.cos(rot - sy) * torch.tan(sx) / torch.cos(sy) - torch.sin(rot)
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = -torch.sin(rot - sy) * torch.tan(sx) / torch.cos(sy) + torch.cos(rot)
    inv = torch.stack([d, -b, -c, a], dim=1).reshape(-1, 2, 2)
    shift = torch.stack([-cx - tx, -cy - ty], dim=1)[:, :, None]
    offset = (inv @ shift)[:, :, 0] + torch.stack([cx, cy], dim=1)
    return torch.cat([inv, offset[:, :, None]], dim=2).float()


def affine_batch(images: Tensor, theta: Tensor) -> Tensor:
    """uint8 ``images`` (K, C, H, W) warped by per-image inverse affine matrices ``theta``
    (K, 2, 3) in centred pixel coordinates: one sampling grid for the whole batch, bilinear,
    zeros outside, rounded back to uint8 (torchvision's tensor ``affine`` image by image)."""
    k, _, h, w = images.shape
    xs = torch.linspace(-w * 0.5 + 0.5, w * 0.5 - 0.5, steps=w)
    ys = torch.linspace(-h * 0.5 + 0.5, h * 0.5 - 0.5, steps=h)
    base = torch.empty(1, h, w, 3)
    base[..., 0] = xs
    base[..., 1] = ys[:, None]
    base[..., 2] = 1.0
    scaled = theta.transpose(1, 2) / torch.tensor([0.5 * w, 0.5 * h])
    grid = base.view(1, h * w, 3).expand(k, -1, -1).bmm(scaled).view(k, h, w, 2)
    out = F.grid_sample(
        images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out.round_().to(torch.uint8)


def _apply_step(images: Tensor, ops: Tensor, magnitudes: Tensor) -> Tensor:
    """uint8 ``images`` (K, C, H, W) after operation ``ops[i]`` at ``magnitudes[i]`` each,
    changed in place."""
    out = images
    geometric = torch.tensor([AUGMIX_OPS[int(k)] in _GEOMETRIC for k in ops], dtype=torch.bool)
    if geometric.any():
        idx = geometric.nonzero()[:, 0]
        theta = _affine_matrices(ops[idx], magnitudes[idx], images.shape[-2], images.shape[-1])
        out[idx] = affine_batch(images[idx], theta)
    for name in ("posterize", "solarize", "autocontrast", "equalize"):
        idx = (ops == AUGMIX_OPS.index(name)).nonzero()[:, 0]
        if len(idx) == 0:
            continue
        chosen = images[idx]
        if name == "posterize":
            bits = magnitudes[idx].to(torch.int64)
            mask = (255 - (2 ** (8 - bits) - 1)).to(torch.uint8)
            out[idx] = chosen & mask[:, None, None, None]
        elif name == "solarize":
            threshold = magnitudes[idx].float()[:, None, None, None]
            out[idx] = torch.where(chosen >= threshold, 255 - chosen, chosen)
        elif name == "autocontrast":
            # torchvision's v1 tensor autocontrast (AugMix's) works on batches; v2 rounds
            # differently in a few pixels.
            out[idx] = TF1.autocontrast(chosen)
        else:
            out[idx] = TF.equalize(chosen)
    return out


def apply_augmix(images: Tensor, params: AugMixParams) -> Tensor:
    """AugMix of uint8 ``images`` (B, C, H, W) with the choices ``params``: every chain's steps
    are applied to all images at once, operation by operation; the mix
    ``skip * x + sum_c weights_c * chain_c(x)`` is computed in float and truncated to uint8 as
    torchvision does."""
    b = images.shape[0]
    chains = images.repeat(AUGMIX_WIDTH, 1, 1, 1)  # chain c of image i at c * b + i
    depth = params.depth.t().reshape(-1)
    ops = params.ops.permute(1, 0, 2).reshape(-1, AUGMIX_MAX_DEPTH)
    magnitudes = params.magnitudes.permute(1, 0, 2).reshape(-1, AUGMIX_MAX_DEPTH)
    for step in range(AUGMIX_MAX_DEPTH):
        active = (depth > step).nonzero()[:, 0]
        if len(active):
            chains[active] = _apply_step(
                chains[active], ops[active, step], magnitudes[active, step]
            )
    mix = params.skip.view(b, 1, 1, 1) * images
    for c in range(AUGMIX_WIDTH):
        mix.add_(params.weights[:, c].view(b, 1, 1, 1) * chains[c * b : (c + 1) * b])
    return mix.to(torch.uint8)


class BatchAugMix:
    """AugMix (Hendrycks et al. 2020) on float batches in [0, 1], per image as torchvision's
    ``AugMix(severity, all_ops=False)`` (3 chains of depth 1-3, Beta(1, 1) / Dirichlet(1, 1, 1)
    weights, bilinear geometry), on the image quantized to uint8; the result is returned as
    float. The operations overlapping CIFAR-10-C's corruptions (brightness, color, contrast,
    sharpness) are left out, as in the AugMix paper."""

    def __init__(self, severity: int) -> None:
        self.severity = severity

    def params(self, uniforms: Tensor, image_size: tuple[int, int]) -> AugMixParams:
        """The choices for images whose uniform draws are the rows of ``uniforms``."""
        return draw_augmix_params(uniforms, self.severity, image_size)

    def __call__(self, images: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
        uniforms = torch.stack([torch.rand(_AUGMIX_DRAWS, generator=g) for g in generators])
        params = self.params(uniforms, (images.shape[-2], images.shape[-1]))
        return apply_augmix(to_uint8(images), params).float().div_(255.0)

    def __repr__(self) -> str:
        return f"BatchAugMix(severity={self.severity})"


class AugMixFloat:
    """Per-sample :class:`BatchAugMix` of one (3, H, W) image, drawing from torch's global CPU
    random stream (stage-1 training)."""

    def __init__(self, severity: int) -> None:
        self.augmix = BatchAugMix(severity)

    def __call__(self, image: Tensor) -> Tensor:
        uniforms = torch.rand(1, _AUGMIX_DRAWS)
        params = self.augmix.params(uniforms, (image.shape[-2], image.shape[-1]))
        return apply_augmix(to_uint8(image[None]), params)[0].float().div_(255.0)

    def __repr__(self) -> str:
        return f"AugMixFloat(severity={self.augmix.severity})"


class AugMixTriplet:
    """The three images of AugMix's Jensen-Shannon consistency loss from one (3, H, W) image:
    ``(x, augmix(x), augmix(x))`` stacked into (3, 3, H, W), ``x`` being the image after
    ``pre`` (e.g. crop + flip; None: unchanged) and the two AugMix draws independent."""

    def __init__(self, augmix: Callable[[Tensor], Tensor], pre: Callable[[Tensor], Tensor] | None):
        self.augmix = augmix
        self.pre = pre

    def __call__(self, image: Tensor) -> Tensor:
        x = self.pre(image) if self.pre is not None else image
        return torch.stack([x, self.augmix(x), self.augmix(x)])

    def __repr__(self) -> str:
        return f"AugMixTriplet(pre={self.pre!r}, augmix={self.augmix!r})"


class BatchGaussianNoise:
    """:class:`GaussianNoise` of a batch, image ``i`` drawing from ``generators[i]`` (the same
    noise as the per-sample transform under that image's seed)."""

    def __init__(self, std: float) -> None:
        self.std = std

    def __call__(self, images: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
        shape = images.shape[1:]
        noise = torch.stack([torch.randn(shape, generator=g) for g in generators])
        return (images + self.std * noise).clamp_(0.0, 1.0)

    def __repr__(self) -> str:
        return f"BatchGaussianNoise(std={self.std})"


class BatchCropFlip:
    """Random crop of the zero-padded batch and random horizontal flip, image ``i`` drawing
    from ``generators[i]`` as torchvision's ``RandomCrop(size, padding=pad)`` then
    ``RandomHorizontalFlip()`` draw (crop row, crop column, flip)."""

    def __init__(self, size: int, pad: int) -> None:
        self.size = size
        self.pad = pad

    def __call__(self, images: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
        _, _, h, w = images.shape
        p, s = self.pad, self.size
        draws = []
        for g in generators:
            row = torch.randint(0, h + 2 * p - s + 1, (1,), generator=g)
            col = torch.randint(0, w + 2 * p - s + 1, (1,), generator=g)
            flip = torch.rand(1, generator=g) < 0.5
            draws.append(torch.cat([row, col, flip.long()]))
        row, col, flip = torch.stack(draws).unbind(1)
        return crop_flip(images, row, col, flip.bool(), size=s, pad=p)

    def __repr__(self) -> str:
        return f"BatchCropFlip(size={self.size}, pad={self.pad})"


def crop_flip(
    images: Tensor, row: Tensor, col: Tensor, flip: Tensor, *, size: int, pad: int
) -> Tensor:
    """Crops ``size`` x ``size`` of the zero-padded (by ``pad``) ``images`` (B, C, H, W) at
    per-image offsets ``row``/``col`` (B,), mirrored where ``flip`` (B,) is true; on the
    images' device."""
    b = images.shape[0]
    padded = F.pad(images, (pad, pad, pad, pad))
    offsets = torch.arange(size, device=images.device)
    rows = (row[:, None] + offsets)[:, :, None]
    cols = torch.where(flip[:, None], col[:, None] + size - 1 - offsets, col[:, None] + offsets)
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, :, rows, cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


BatchAugmentation = Callable[[Tensor, Sequence[torch.Generator]], Tensor]


def standard_padding(image_size: int, padding: int = 4) -> int:
    """The zero padding of the ``standard`` crop: ``padding``, or ``max(1, image_size // 8)``
    below 16 px."""
    if padding < 0:
        raise DataError(f"padding={padding} must be >= 0")
    return max(1, image_size // 8) if image_size < 16 else padding


def _check(name: str, image_size: int, noise_std: float, augmix_severity: int) -> None:
    if name not in AUGMENTATIONS:
        raise DataError(f"unknown augmentation {name!r}; valid: {', '.join(AUGMENTATIONS)}")
    if image_size < 1:
        raise DataError(f"image_size={image_size} must be a positive integer")
    if name == "gaussian_noise" and noise_std < 0:
        raise DataError(f"noise_std={noise_std} must be >= 0")
    if name == "augmix" and not 1 <= augmix_severity <= 10:
        raise DataError(f"augmix_severity={augmix_severity} must be in 1..10")


def build_augmentation(
    name: str,
    *,
    image_size: int,
    padding: int = 4,
    noise_std: float = 0.1,
    augmix_severity: int = 3,
) -> Callable[[Tensor], Tensor] | None:
    """The per-sample training augmentation ``name`` for square images of side ``image_size``.

    ``standard``: random crop of the zero-padded image (padding ``max(1, image_size // 8)``
    instead of ``padding`` below 16 px) and a random horizontal flip; ``gaussian_noise``: add
    N(0, noise_std^2) and clip; ``augmix``: AugMix at ``augmix_severity``; ``none``: None.
    """
    _check(name, image_size, noise_std, augmix_severity)
    if name == "none":
        return None
    if name == "standard":
        pad = standard_padding(image_size, padding)
        return T.Compose([T.RandomCrop(image_size, padding=pad, fill=0), T.RandomHorizontalFlip()])
    if name == "gaussian_noise":
        return GaussianNoise(noise_std)
    return AugMixFloat(augmix_severity)


def build_batch_augmentation(
    name: str,
    *,
    image_size: int,
    padding: int = 4,
    noise_std: float = 0.1,
    augmix_severity: int = 3,
) -> BatchAugmentation | None:
    """The batched counterpart of :func:`build_augmentation` (same arguments): a callable
    ``(images (B, 3, H, W), generators) -> images`` where image ``i`` draws only from
    ``generators[i]`` (see :func:`image_generators`)."""
    _check(name, image_size, noise_std, augmix_severity)
    if name == "none":
        return None
    if name == "standard":
        return BatchCropFlip(image_size, standard_padding(image_size, padding))
    if name == "gaussian_noise":
        return BatchGaussianNoise(noise_std)
    return BatchAugMix(augmix_severity)


def augment_batches(
    batches: Iterable[tuple[Tensor, Tensor, Tensor]], augmentation: BatchAugmentation, seed: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """``(images, labels)`` of each ``(images, labels, indices)`` batch with every image
    augmented by ``augmentation`` under its own generator ``derive_seed(seed, index)``."""
    for images, labels, indices in batches:
        yield augmentation(images, image_generators(seed, indices.tolist())), labels
