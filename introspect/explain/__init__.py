"""Visual explanations of a classifier's decisions (METHOD.md §2).

Every map function takes ``(model, images, layer=None, target=None, normalize=True)`` and
returns ``(B, H, W)`` maps at the input resolution on the images' device, min-max normalized
to ``[0, 1]`` per image unless ``normalize=False``. The model is run in eval mode with
autograd enabled (also inside ``torch.inference_mode``); its train/eval modes are restored,
hooks removed and no parameter ``.grad`` is touched.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

# Names -> defining submodule, imported on first use: the command-line front end
# (``explain_main``) checks its arguments before torch is imported.
_EXPORTS = {
    "ExplanationError": "errors",
    "VoiceResult": "voice",
    "contrast_cam": "cam",
    "counterfactual_cam": "cam",
    "deconvnet": "saliency",
    "explain_main": "cli",
    "explanation_figure": "figure",
    "gradcam": "cam",
    "guided_backprop": "saliency",
    "guided_gradcam": "saliency",
    "occlusion": "saliency",
    "prototype_evidence": "prototypes",
    "prototype_figure": "prototypes",
    "resolve_layer": "layers",
    "vanilla_gradient": "saliency",
    "voice": "voice",
}

if TYPE_CHECKING:
    from introspect.explain.cam import contrast_cam, counterfactual_cam, gradcam
    from introspect.explain.cli import explain_main
    from introspect.explain.errors import ExplanationError
    from introspect.explain.figure import explanation_figure
    from introspect.explain.layers import resolve_layer
    from introspect.explain.prototypes import prototype_evidence, prototype_figure
    from introspect.explain.saliency import (
        deconvnet,
        guided_backprop,
        guided_gradcam,
        occlusion,
        vanilla_gradient,
    )
    from introspect.explain.voice import VoiceResult, voice


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'introspect.explain' has no attribute {name!r}")
    value = getattr(import_module(f"introspect.explain.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


__all__ = [
    "ExplanationError",
    "VoiceResult",
    "contrast_cam",
    "counterfactual_cam",
    "deconvnet",
    "explain_main",
    "explanation_figure",
    "gradcam",
    "guided_backprop",
    "guided_gradcam",
    "occlusion",
    "prototype_evidence",
    "prototype_figure",
    "resolve_layer",
    "vanilla_gradient",
    "voice",
]
