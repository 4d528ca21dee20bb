"""Model-parameter randomization test of explanation maps (Adebayo et al. 2018).

A map that explains the model should change when the model's learned weights are destroyed.
The layers are re-initialized on a deep copy, from the output layer down and cumulatively
(``"cascading"``), or one at a time with all the others trained (``"independent"``); after each
step the maps are recomputed for the trained model's predicted classes and compared with the
trained model's maps by Spearman rank correlation and SSIM, per image.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from introspect.explain.core import ExplanationError, MapMethod, check_images, explaining

ORDERS = ("cascading", "independent")


def randomizable_layers(model: nn.Module) -> list[str]:
    """Names of the modules of ``model`` that can be re-initialized (they define
    ``reset_parameters`` and hold parameters or buffers of their own), from the output layer
    down (the reverse of ``named_modules`` order)."""
    names = [
        name
        for name, module in model.named_modules()
        if callable(getattr(module, "reset_parameters", None))
        and (
            next(module.parameters(recurse=False), None) is not None
            or next(module.buffers(recurse=False), None) is not None
        )
    ]
    return names[::-1]


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """``(B, D)`` 0-based ranks of each row of ``values`` ``(B, D)``, ties given their mean rank."""
    ordered = values.sort(dim=1).values
    low = torch.searchsorted(ordered, values.contiguous(), right=False)
    high = torch.searchsorted(ordered, values.contiguous(), right=True)
    return (low + high - 1).to(torch.float64) / 2.0


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(B,)`` Spearman rank correlation of each pair of maps ``a[i]``, ``b[i]`` (any shape
    after the batch dimension; ties get their mean rank); ``nan`` where a map is constant."""
    ra, rb = average_ranks(a.flatten(1).double()), average_ranks(b.flatten(1).double())
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    denominator = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    return (ra * rb).sum(1) / denominator.where(denominator > 0, torch.nan)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> torch.Tensor:
    """``(B,)`` structural similarity of each pair of ``(B, H, W)`` maps: the mean over
    ``window`` × ``window`` uniform windows (valid positions, sample covariances) with
    ``K1 = 0.01``, ``K2 = 0.03`` and the data range of the pair's values."""
    x, y = a.double()[:, None], b.double()[:, None]
    if min(x.shape[-2:]) < window:
        raise ExplanationError(f"SSIM needs maps of at least {window} x {window} pixels")
    flat = torch.cat([x.flatten(1), y.flatten(1)], 1)
    span = (flat.max(1).values - flat.min(1).values).view(-1, 1, 1, 1)
    c1, c2 = (0.01 * span) ** 2, (0.03 * span) ** 2
    correction = window * window / (window * window - 1)

    def mean(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, window, stride=1)

    mx, my = mean(x), mean(y)
    vx = correction * (mean(x * x) - mx * mx)
    vy = correction * (mean(y * y) - my * my)
    cxy = correction * (mean(x * y) - mx * my)
    numerator = (2 * mx * my + c1) * (2 * cxy + c2)
    denominator = (mx * mx + my * my + c1) * (vx + vy + c2)
    return (numerator / denominator).flatten(1).mean(1)


class Randomization(NamedTuple):
    """The similarities of a randomization test: step ``i`` re-initialized ``layers[i]`` (and,
    cascading, every layer before it in the list). ``spearman`` and ``ssim`` are ``(steps, B)``
    per image; ``steps`` are the step indices that were measured."""

    order: str
    layers: list[str]
    steps: list[int]
    spearman: torch.Tensor
    ssim: torch.Tensor

    def summary(self) -> list[dict[str, Any]]:
        """One row per measured step: the layer, how many layers are random, and the mean
        Spearman correlation and SSIM over the images where they are defined."""
        rows = []
        for row, step in enumerate(self.steps):
            rho, structure = self.spearman[row], self.ssim[row]
            rows.append(
                {
                    "layer": self.layers[step],
                    "randomized": step + 1 if self.order == "cascading" else 1,
                    "spearman": float(rho.nanmean()),
                    "ssim": float(structure.nanmean()),
                    "defined": int((~rho.isnan()).sum()),
                }
            )
        return rows


def _maps(
    method: MapMethod,
    model: nn.Module,
    images: torch.Tensor,
    layer: str | None,
    target: torch.Tensor,
    options: Mapping[str, Any],
) -> torch.Tensor:
    maps = method(model, images, layer, target, normalize=False, **options)
    return maps.reshape(images.shape[0], *images.shape[-2:]).detach()


def model_randomization(
    method: MapMethod,
    model: nn.Module,
    images: torch.Tensor,
    *,
    layer: str | None = None,
    options: Mapping[str, Any] | None = None,
    order: str = "cascading",
    layers: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
    seed: int = 0,
) -> Randomization:
    """Randomize the layers of a deep copy of ``model`` and compare the maps of ``method``.

    ``method`` is called as ``method(model, images, layer, target, normalize=False,
    **options)`` (the shared call of ``introspect.explain``'s map methods) for the classes the
    trained model predicts; ``layer`` must be a dotted path (or ``None``) so that it names the
    same layer in the copy. ``layers`` lists the layers to re-initialize in order (default
    :func:`randomizable_layers`: every one, from the output layer down); ``steps`` the step
    indices at which maps are recomputed (default every step; cascading randomization still
    passes through the others). Each layer is re-initialized by its ``reset_parameters`` with
    the global random generator seeded with ``seed`` (the caller's generator state is kept).
    ``model`` itself is never changed.
    """
    check_images(images)
    if order not in ORDERS:
        raise ExplanationError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    if layer is not None and not isinstance(layer, str):
        raise ExplanationError("layer must be a dotted path (or None) to name it in the copies")
    options = dict(options or {})
    names = list(layers) if layers is not None else randomizable_layers(model)
    if not names:
        raise ExplanationError("the model has no layer to randomize")
    measured = list(range(len(names))) if steps is None else sorted(set(steps))
    if not measured or measured[0] < 0 or measured[-1] >= len(names):
        raise ExplanationError(f"steps must be indices in [0, {len(names)}), got {steps!r}")
    with explaining(model), torch.no_grad():
        target = model(images).argmax(dim=1)
    reference = _maps(method, model, images, layer, target, options)
    rhos, structures = [], []
    randomized = copy.deepcopy(model)
    trained = copy.deepcopy(model.state_dict())
    for step, name in enumerate(names):
        if step > measured[-1]:
            break
        if order == "independent":
            if step not in measured:
                continue
            randomized.load_state_dict(trained)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            randomized.get_submodule(name).reset_parameters()
        if step in measured:
            maps = _maps(method, randomized, images, layer, target, options)
            rhos.append(spearman(reference, maps))
            structures.append(ssim(reference, maps))
    return Randomization(order, names, measured, torch.stack(rhos), torch.stack(structures))


def even_steps(count: int, points: int) -> list[int]:
    """``points`` step indices spread evenly over ``count`` steps, always the first and the
    last (fewer when ``count`` is small)."""
    if count < 1 or points < 1:
        raise ExplanationError("even_steps needs at least one step and one point")
    if points == 1:
        return [count - 1]
    return sorted({round(i * (count - 1) / (points - 1)) for i in range(points)})
