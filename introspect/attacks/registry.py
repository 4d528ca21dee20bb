"""Attacks by name, as ``evaluate.py scores`` refers to them (``scores.attacks``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from introspect.attacks.carlini_wagner import cw_l2
from introspect.attacks.gradient import bim, fgsm, iterll, pgd

ATTACKS: dict[str, Callable[..., torch.Tensor]] = {
    "fgsm": fgsm,
    "bim": bim,
    "pgd": pgd,
    "cw": cw_l2,
    "iterll": iterll,
}


def attack_by_name(name: str) -> Callable[..., torch.Tensor]:
    """The attack registered as ``name`` (one of ``ATTACKS``); ``KeyError`` lists them."""
    if name not in ATTACKS:
        raise KeyError(f"unknown attack {name!r}; choose from {sorted(ATTACKS)}")
    return ATTACKS[name]
