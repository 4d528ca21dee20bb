"""Visual explanations of a classifier's decisions and their evaluation (docs/guides/).

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
    "Explainer": "explainers",
    "ExplanationError": "errors",
    "MapExplainer": "explainers",
    "create_explainer": "explainers",
    "list_explainers": "explainers",
    "Faithfulness": "faithfulness",
    "MAP_METHODS": "methods",
    "Patches": "network",
    "VoiceEvaluation": "uncertainty",
    "VoiceResult": "uncertainty",
    "activation_maps": "network",
    "activations_figure": "network",
    "cam": "class_maps",
    "class_gradients": "figure",
    "contrast_cam": "class_maps",
    "counterfactual_cam": "class_maps",
    "curve_auc": "faithfulness",
    "deconvnet": "saliency",
    "deletion_insertion": "faithfulness",
    "evaluate_faithfulness": "faithfulness",
    "evaluate_voice": "uncertainty",
    "explanation_figure": "figure",
    "filters_figure": "network",
    "first_layer_filters": "network",
    "gradcam": "class_maps",
    "gradcam_plus_plus": "class_maps",
    "guided_backprop": "saliency",
    "guided_gradcam": "saliency",
    "integrated_gradients": "averaging",
    "introspection_figure": "figure",
    "lime": "perturbation",
    "methods_figure": "figure",
    "nearest_neighbours": "network",
    "neighbours_figure": "network",
    "occlusion": "saliency",
    "patches_figure": "network",
    "penultimate_features": "network",
    "perturbation_curves": "faithfulness",
    "random_map": "methods",
    "prototype_evidence": "prototypes",
    "prototype_figure": "prototypes",
    "resolve_layer": "layers",
    "rise": "perturbation",
    "rise_masks": "perturbation",
    "smoothgrad": "averaging",
    "superpixels": "perturbation",
    "top_activating_patches": "network",
    "tsne_embedding": "network",
    "tsne_figure": "network",
    "vanilla_gradient": "saliency",
    "voice": "uncertainty",
    "voice_figure": "figure",
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
    from introspect.explain.errors import ExplanationError
    from introspect.explain.explainers import (
        Explainer,
        MapExplainer,
        create_explainer,
        list_explainers,
    )
    from introspect.explain.faithfulness import (
        Faithfulness,
        curve_auc,
        deletion_insertion,
        evaluate_faithfulness,
        perturbation_curves,
    )
    from introspect.explain.figure import (
        class_gradients,
        explanation_figure,
        introspection_figure,
        methods_figure,
        voice_figure,
    )
    from introspect.explain.layers import resolve_layer
    from introspect.explain.methods import MAP_METHODS, random_map
    from introspect.explain.network import (
        Patches,
        activation_maps,
        activations_figure,
        filters_figure,
        first_layer_filters,
        nearest_neighbours,
        neighbours_figure,
        patches_figure,
        penultimate_features,
        top_activating_patches,
        tsne_embedding,
        tsne_figure,
    )
    from introspect.explain.perturbation import lime, rise, rise_masks, superpixels
    from introspect.explain.prototypes import prototype_evidence, prototype_figure
    from introspect.explain.saliency import (
        deconvnet,
        guided_backprop,
        guided_gradcam,
        occlusion,
        vanilla_gradient,
    )
    from introspect.explain.uncertainty import VoiceEvaluation, VoiceResult, evaluate_voice, voice


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'introspect.explain' has no attribute {name!r}")
    value = getattr(import_module(f"introspect.explain.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "Explainer",
    "ExplanationError",
    "MapExplainer",
    "create_explainer",
    "list_explainers",
    "Faithfulness",
    "MAP_METHODS",
    "Patches",
    "VoiceEvaluation",
    "VoiceResult",
    "activation_maps",
    "activations_figure",
    "cam",
    "class_gradients",
    "contrast_cam",
    "counterfactual_cam",
    "curve_auc",
    "deconvnet",
    "deletion_insertion",
    "evaluate_faithfulness",
    "evaluate_voice",
    "explanation_figure",
    "filters_figure",
    "first_layer_filters",
    "gradcam",
    "gradcam_plus_plus",
    "guided_backprop",
    "guided_gradcam",
    "integrated_gradients",
    "introspection_figure",
    "lime",
    "methods_figure",
    "nearest_neighbours",
    "neighbours_figure",
    "occlusion",
    "patches_figure",
    "penultimate_features",
    "perturbation_curves",
    "random_map",
    "prototype_evidence",
    "prototype_figure",
    "resolve_layer",
    "rise",
    "rise_masks",
    "smoothgrad",
    "superpixels",
    "top_activating_patches",
    "tsne_embedding",
    "tsne_figure",
    "vanilla_gradient",
    "voice",
    "voice_figure",
]
