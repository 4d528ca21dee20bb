"""Visual explanations of a classifier's decisions (METHOD.md §2) and their evaluation.

Every map function takes ``(model, images, layer=None, target=None, normalize=True, ...)``
and returns ``(B, H, W)`` maps at the input resolution on the images' device, min-max
normalized to ``[0, 1]`` per image unless ``normalize=False``. The model is run in eval mode
with autograd enabled (also inside ``torch.inference_mode``); its train/eval modes are
restored, hooks removed and no parameter ``.grad`` is touched.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

# Names -> defining submodule, imported on first use: the command-line front ends check
# their arguments before torch is imported.
_EXPORTS = {
    "ExplanationError": "errors",
    "MAP_METHODS": "methods",
    "VoiceResult": "uncertainty",
    "cam": "class_maps",
    "contrast_cam": "class_maps",
    "counterfactual_cam": "class_maps",
    "deconvnet": "saliency",
    "explain_main": "cli",
    "explanation_figure": "figure",
    "gradcam": "class_maps",
    "gradcam_plus_plus": "class_maps",
    "guided_backprop": "saliency",
    "guided_gradcam": "saliency",
    "integrated_gradients": "averaging",
    "lime": "perturbation",
    "occlusion": "saliency",
    "random_map": "methods",
    "resolve_layer": "layers",
    "rise": "perturbation",
    "rise_masks": "perturbation",
    "smoothgrad": "averaging",
    "superpixels": "perturbation",
    "vanilla_gradient": "saliency",
    "voice": "uncertainty",
}

if TYPE_CHECKING:
    from introspect.explain.averaging import integrated_gradients, smoothgrad
    from introspect.explain.class_maps import (
        cam,
        contrast_cam,
        counterfactual_cam,
        gradcam,
        gradcam_plus_plus,
    )
    from introspect.explain.cli import explain_main
    from introspect.explain.errors import ExplanationError
    from introspect.explain.figure import explanation_figure
    from introspect.explain.layers import resolve_layer
    from introspect.explain.methods import MAP_METHODS, random_map
    from introspect.explain.perturbation import lime, rise, rise_masks, superpixels
    from introspect.explain.saliency import (
        deconvnet,
        guided_backprop,
        guided_gradcam,
        occlusion,
        vanilla_gradient,
    )
    from introspect.explain.uncertainty import VoiceResult, voice


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'introspect.explain' has no attribute {name!r}")
    value = getattr(import_module(f"introspect.explain.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


__all__ = [
    "ExplanationError",
    "MAP_METHODS",
    "VoiceResult",
    "cam",
    "contrast_cam",
    "counterfactual_cam",
    "deconvnet",
    "explain_main",
    "explanation_figure",
    "gradcam",
    "gradcam_plus_plus",
    "guided_backprop",
    "guided_gradcam",
    "integrated_gradients",
    "lime",
    "occlusion",
    "random_map",
    "resolve_layer",
    "rise",
    "rise_masks",
    "smoothgrad",
    "superpixels",
    "vanilla_gradient",
    "voice",
]
