"""Confidence scores of the introspective chain ``images -> backbone -> r_x -> H`` (docs/concepts).

``introspect.gradients.extract_features`` computes ``r_x`` without autograd through the
backbone (its outputs are detached), so it cannot carry an input gradient.
``introspective_features`` recomputes the same features as a differentiable function of the
images, from the closed form
``dL/dW = g(z) h^T`` with ``g`` the loss gradient at the logits (``N p - 1`` for the default
all-ones cross-entropy); ODIN's input perturbation backpropagates through it, i.e. through ``H``,
the normalization, the outer product and the whole backbone.
"""

from __future__ import annotations

import torch

from introspect.backbones.head import forward_with_head_input, resolve_head
from introspect.gradients.extract import check_options, head_output_features
from introspect.gradients.normalize import normalize_features
from introspect.models.stage2 import IntrospectiveClassifier
from introspect.scores.model_based import ODIN_EPS, ODIN_T, perturb_towards
from introspect.scores.output import msp


def introspective_features(head: IntrospectiveClassifier, images: torch.Tensor) -> torch.Tensor:
    """The raw features ``head.features(images)`` (before standardization), as a differentiable
    function of ``images``.

    Supports the last-layer recipes (any ``loss``, a string ``target``, ``per_class``,
    ``include_bias``, normalization), for a backbone whose logits are its head's output.
    """
    options = dict(head.feature_options)
    loss = options.get("loss", "ce")
    target = options.get("target", "ones")
    per_class = options.get("per_class", False)
    include_bias = options.get("include_bias", False)
    params = options.get("params")
    check_options(loss, target, per_class, include_bias, params)
    if params is not None or not isinstance(target, str):
        raise ValueError(
            "differentiable introspective features cover the last-layer recipes with a string "
            f"target; got params={params!r}, target of type {type(target).__name__}"
        )
    backbone = head.backbone
    linear = resolve_head(backbone, getattr(backbone, "head", None), images[:1])
    outputs: list[torch.Tensor] = []
    handle = linear.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    try:
        logits, h = forward_with_head_input(backbone, linear, images)
    finally:
        handle.remove()
    if outputs[0] is not logits:
        raise ValueError(
            "the backbone's logits must be the output of its head; the closed form used here "
            "does not cover operations after the head"
        )
    raw = head_output_features(
        logits, h, loss=loss, target=target, per_class=per_class, include_bias=include_bias
    )
    return normalize_features(raw, head.extraction_normalize())


def introspective_msp(head: IntrospectiveClassifier, images: torch.Tensor) -> torch.Tensor:
    """Maximum softmax probability of the stage-2 head ``H`` on ``images`` in ``[0, 1]``."""
    with torch.no_grad():
        return msp(head(images))


def introspective_odin(
    head: IntrospectiveClassifier,
    images: torch.Tensor,
    *,
    T: float = ODIN_T,
    eps: float = ODIN_EPS,
) -> torch.Tensor:
    """ODIN (see ``scores.odin``) on the logits of ``H``: the perturbation is the signed input
    gradient of ``log max softmax(H(r_x) / T)`` through the whole chain
    (``introspective_features``), and the score is ``max softmax(H(r_x~) / T)`` of the perturbed
    images. ``head`` must be in eval mode."""
    if T <= 0:
        raise ValueError(f"temperature T must be positive, got {T}")

    def log_msp(x: torch.Tensor) -> torch.Tensor:
        logits = head.classify(introspective_features(head, x))
        return torch.log_softmax(logits / T, dim=1).amax(dim=1)

    x = perturb_towards(log_msp, images, eps) if eps else images
    with torch.no_grad():
        return msp(head(x) / T)
