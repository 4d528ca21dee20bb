"""The stage-1 training recipes of Table 1 (``stage1.recipe``) as the existing pieces they
combine: training augmentations, PGD adversarial training, SimCLR pre-training of the trunk
and feature-denoising blocks."""

from __future__ import annotations

from dataclasses import dataclass

from introspect.runs.errors import PipelineError


@dataclass(frozen=True)
class Recipe:
    """What stage 1 does: ``augment`` (augmentations applied in order to each training image),
    ``adversarial`` (PGD training), ``contrastive`` (SimCLR pre-training before the classifier)
    and ``denoise`` (feature-denoising blocks in the backbone)."""

    augment: tuple[str, ...]
    adversarial: bool = False
    contrastive: bool = False
    denoise: bool = False


RECIPES: dict[str, Recipe] = {
    "standard": Recipe(("standard",)),
    "noise": Recipe(("standard", "gaussian_noise")),
    "augmix": Recipe(("standard", "augmix")),
    "adversarial": Recipe(("standard",), adversarial=True),
    "simclr": Recipe(("standard",), contrastive=True),
    # Xie et al. 2019 train their feature-denoising networks adversarially.
    "denoising": Recipe(("standard",), adversarial=True, denoise=True),
}


def resolve_recipe(name: str, augment: str, adversarial: bool) -> Recipe:
    """The recipe ``name``; ``custom`` is ``augment`` and ``adversarial`` as configured.

    A named recipe fixes the augmentation and adversarial training, so ``augment`` must stay
    ``none`` and ``adversarial`` off (``PipelineError`` naming the fix otherwise); an unknown
    name raises ``PipelineError`` listing the recipes.
    """
    if name == "custom":
        return Recipe(() if augment == "none" else (augment,), adversarial=adversarial)
    if name not in RECIPES:
        raise PipelineError(f"unknown stage1.recipe {name!r}; valid: custom, {', '.join(RECIPES)}")
    if augment != "none":
        raise PipelineError(
            f"stage1.recipe={name} sets the augmentation ({' + '.join(RECIPES[name].augment)}); "
            f"remove stage1.augment={augment} or use stage1.recipe=custom"
        )
    if adversarial and not RECIPES[name].adversarial:
        raise PipelineError(
            f"stage1.recipe={name} trains without PGD; remove stage1.adversarial.enabled=true "
            "or use stage1.recipe=adversarial (or custom)"
        )
    return RECIPES[name]
