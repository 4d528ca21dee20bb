"""Adversarial attacks at evaluation time (and PGD for adversarial training).

Every attack is called as ``attack(model, images, labels, *, eps=..., ...)`` on RGB images in
``[0, 1]`` (the ``Backbone`` convention: normalization happens inside the model), returns
detached adversarial images in ``[0, 1]`` on the images' device, and leaves the model's
parameters untouched (no ``.grad``, ``requires_grad`` restored). The model is used in the mode
it is in; callers put it in eval mode.
"""

from introspect.attacks.carlini_wagner import cw_l2
from introspect.attacks.gradient import bim, fgsm, iterll, kurakin_steps, least_likely, pgd
from introspect.attacks.registry import ATTACKS, attack_by_name

__all__ = [
    "ATTACKS",
    "attack_by_name",
    "bim",
    "cw_l2",
    "fgsm",
    "iterll",
    "kurakin_steps",
    "least_likely",
    "pgd",
]
