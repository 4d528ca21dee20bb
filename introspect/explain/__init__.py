"""Visual explanations of a classifier's decisions and their evaluation (docs/guides/).

Every map function takes ``(model, images, layer=None, target=None, normalize=True, ...)``
and returns ``(B, H, W)`` maps at the input resolution on the images' device, min-max
normalized to ``[0, 1]`` per image unless ``normalize=False``. The model is run in eval mode
with autograd enabled (also inside ``torch.inference_mode``); its train/eval modes are
restored, hooks removed and no parameter ``.grad`` is touched.
"""

from introspect.lazy import lazy_exports

# Public name -> the submodule that defines it, imported on first use: the command-line front
# ends check their arguments before torch is imported.
_EXPORTS: dict[str, str] = {
    "Explainer": "introspect.explain.explainers",
    "ExplanationError": "introspect.explain.errors",
    "MapExplainer": "introspect.explain.explainers",
    "create_explainer": "introspect.explain.explainers",
    "list_explainers": "introspect.explain.explainers",
    "Faithfulness": "introspect.explain.faithfulness",
    "MAP_METHODS": "introspect.explain.methods",
    "Patches": "introspect.explain.network",
    "VoiceEvaluation": "introspect.explain.uncertainty",
    "VoiceResult": "introspect.explain.uncertainty",
    "activation_maps": "introspect.explain.network",
    "activations_figure": "introspect.explain.network",
    "cam": "introspect.explain.class_maps",
    "class_gradients": "introspect.explain.figure",
    "contrast_cam": "introspect.explain.class_maps",
    "counterfactual_cam": "introspect.explain.class_maps",
    "curve_auc": "introspect.explain.faithfulness",
    "deconvnet": "introspect.explain.saliency",
    "deletion_insertion": "introspect.explain.faithfulness",
    "evaluate_faithfulness": "introspect.explain.faithfulness",
    "evaluate_voice": "introspect.explain.uncertainty",
    "explanation_figure": "introspect.explain.figure",
    "filters_figure": "introspect.explain.network",
    "first_layer_filters": "introspect.explain.network",
    "gradcam": "introspect.explain.class_maps",
    "gradcam_plus_plus": "introspect.explain.class_maps",
    "guided_backprop": "introspect.explain.saliency",
    "guided_gradcam": "introspect.explain.saliency",
    "integrated_gradients": "introspect.explain.averaging",
    "introspection_figure": "introspect.explain.figure",
    "lime": "introspect.explain.perturbation",
    "methods_figure": "introspect.explain.figure",
    "nearest_neighbours": "introspect.explain.network",
    "neighbours_figure": "introspect.explain.network",
    "occlusion": "introspect.explain.saliency",
    "patches_figure": "introspect.explain.network",
    "penultimate_features": "introspect.explain.network",
    "perturbation_curves": "introspect.explain.faithfulness",
    "random_map": "introspect.explain.methods",
    "prototype_evidence": "introspect.explain.prototypes",
    "prototype_figure": "introspect.explain.prototypes",
    "resolve_layer": "introspect.explain.layers",
    "rise": "introspect.explain.perturbation",
    "rise_masks": "introspect.explain.perturbation",
    "smoothgrad": "introspect.explain.averaging",
    "superpixels": "introspect.explain.perturbation",
    "top_activating_patches": "introspect.explain.network",
    "tsne_embedding": "introspect.explain.network",
    "tsne_figure": "introspect.explain.network",
    "vanilla_gradient": "introspect.explain.saliency",
    "voice": "introspect.explain.uncertainty",
    "voice_figure": "introspect.explain.figure",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
