"""Consistency checks of the baseline options (temperature scaling, MC dropout,
ensembles); the loader raises ``ConfigError`` with the message."""

from __future__ import annotations

from omegaconf import DictConfig


def baseline_config_error(cfg: DictConfig) -> str | None:
    """The one-line error naming the key when ``stage1.ensemble`` and
    ``backbone.ensemble_checkpoints`` cannot be used together, else ``None`` (their numeric
    ranges are checked with every other field's, see ``schema.RANGES``)."""
    k = cfg.stage1.ensemble
    members = cfg.backbone.ensemble_checkpoints
    if k > 1 and members:
        return (
            f"stage1.ensemble={k} trains an ensemble but backbone.ensemble_checkpoints loads "
            "one; set one of them"
        )
    if k > 1 and cfg.backbone.checkpoint is not None:
        return (
            f"stage1.ensemble={k} trains stage-1 networks, but backbone.checkpoint is set (no "
            "stage 1 is trained); list existing networks in backbone.ensemble_checkpoints instead"
        )
    if members and len(members) < 2:
        return (
            f"backbone.ensemble_checkpoints lists {len(members)} network; an ensemble needs at "
            "least two"
        )
    for i, member in enumerate(members):
        if member.checkpoint is None:
            return (
                f"backbone.ensemble_checkpoints[{i}].checkpoint is missing; give every member "
                "a checkpoint (and a name when its architecture is not backbone.name)"
            )
    if members and cfg.backbone.checkpoint is None:
        first = members[0]
        if first.name not in (None, cfg.backbone.name):
            return (
                f"backbone.ensemble_checkpoints[0] is a {first.name!r} but backbone.name="
                f"{cfg.backbone.name!r}; set backbone.name and backbone.checkpoint to the member "
                "stage 2 introspects"
            )
    return None


def resolve_ensemble_config(cfg: DictConfig) -> None:
    """Introspection stays on the first ensemble member unless configured: with
    ``backbone.ensemble_checkpoints`` and no ``backbone.checkpoint``, the first member's
    checkpoint becomes ``backbone.checkpoint``."""
    members = cfg.backbone.ensemble_checkpoints
    if members and cfg.backbone.checkpoint is None:
        cfg.backbone.checkpoint = members[0].checkpoint
