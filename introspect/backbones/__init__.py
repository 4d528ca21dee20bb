"""Stage-1 classifiers ("backbones"): build by name, load checkpoints, find the linear head."""

from introspect.backbones.checkpoint import (
    CheckpointError,
    load_into_backbone,
    load_state_dict_file,
)
from introspect.backbones.head import HeadNotFoundError
from introspect.backbones.registry import available_backbones, load_backbone, register_backbone
from introspect.backbones.wrapper import Backbone, BackboneError, Normalize, as_backbone

__all__ = [
    "Backbone",
    "BackboneError",
    "CheckpointError",
    "HeadNotFoundError",
    "Normalize",
    "as_backbone",
    "available_backbones",
    "load_backbone",
    "load_into_backbone",
    "load_state_dict_file",
    "register_backbone",
]
