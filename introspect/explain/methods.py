"""Every map method by name, and a random map as the chance reference of metrics."""

from __future__ import annotations

import torch

from introspect.explain.averaging import integrated_gradients, smoothgrad
from introspect.explain.class_maps import (
    cam,
    contrast_cam,
    counterfactual_cam,
    gradcam,
    gradcam_plus_plus,
)
from introspect.explain.core import MapCall, MapMethod, map_method
from introspect.explain.perturbation import lime, rise
from introspect.explain.saliency import (
    deconvnet,
    guided_backprop,
    guided_gradcam,
    occlusion,
    vanilla_gradient,
)

# Every method shares the call (model, images, layer=None, target=None, normalize=True, ...).
MAP_METHODS: dict[str, MapMethod] = {
    "gradcam": gradcam,
    "gradcam_plus_plus": gradcam_plus_plus,
    "cam": cam,
    "counterfactual_cam": counterfactual_cam,
    "contrast_cam": contrast_cam,
    "vanilla_gradient": vanilla_gradient,
    "guided_backprop": guided_backprop,
    "deconvnet": deconvnet,
    "guided_gradcam": guided_gradcam,
    "smoothgrad": smoothgrad,
    "integrated_gradients": integrated_gradients,
    "occlusion": occlusion,
    "rise": rise,
    "lime": lime,
}


@map_method
def random_map(call: MapCall, *, seed: int = 0) -> torch.Tensor:
    """Uniform random ``(B, H, W)`` maps (seeded, independent of the model): the chance level a
    faithfulness metric should separate real explanations from. ``layer`` and ``target`` are
    ignored."""
    images = call.images
    generator = torch.Generator().manual_seed(seed)
    maps = torch.rand(images.shape[0], *images.shape[-2:], generator=generator)
    return maps.to(device=images.device, dtype=images.dtype)


# Rows a method table may add as references; they are not explanations.
REFERENCES: dict[str, MapMethod] = {"random": random_map}
