"""Visual explanations of a classifier's decisions (METHOD.md §2).

Every map function takes ``(model, images, layer=None, target=None, normalize=True)`` and
returns ``(B, H, W)`` maps at the input resolution on the images' device, min-max normalized
to ``[0, 1]`` per image unless ``normalize=False``. The model is run in eval mode with
autograd enabled (also inside ``torch.inference_mode``); its train/eval modes are restored,
hooks removed and no parameter ``.grad`` is touched.
"""

from introspect.explain.cam import contrast_cam, counterfactual_cam, gradcam
from introspect.explain.cli import explain_main
from introspect.explain.core import ExplanationError
from introspect.explain.figure import explanation_figure
from introspect.explain.layers import resolve_layer
from introspect.explain.saliency import (
    deconvnet,
    guided_backprop,
    guided_gradcam,
    occlusion,
    vanilla_gradient,
)
from introspect.explain.voice import VoiceResult, voice

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
    "resolve_layer",
    "vanilla_gradient",
    "voice",
]
