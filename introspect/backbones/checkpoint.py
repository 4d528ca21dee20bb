"""Read classifier weights from checkpoint files and load them into a ``Backbone``.

Accepted files: a raw ``state_dict``; a dict holding one under ``"state_dict"`` (PyTorch
Lightning ``.ckpt`` files, the legacy ``{'state_dict': ..., 'best_prec1': ...}`` format); a whole
pickled ``nn.Module`` (needs ``trust=True``). Key prefixes such as ``module.`` (DataParallel),
``net.`` (a whole ``Backbone``) or ``backbone.net.`` (a LightningModule holding the Backbone as
``backbone``) are detected by matching the keys against the model's own.
"""

from __future__ import annotations

import os
import pickle
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from introspect.backbones.wrapper import Backbone, BackboneError

SHOWN = 5  # offending keys listed per category in error messages


class CheckpointError(BackboneError):
    """A checkpoint file that cannot be read or does not fit the model; the message says why."""


def load_state_dict_file(
    path: str | os.PathLike[str], *, trust: bool = False
) -> dict[str, torch.Tensor]:
    """The tensors of the state dict stored in the checkpoint file ``path``, on the CPU.

    With ``trust=False`` the file is read with ``torch.load(weights_only=True)``, which refuses
    arbitrary pickled Python objects; ``trust=True`` allows them (only for files you trust).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise CheckpointError(
            f"checkpoint file {str(file)!r} does not exist; check backbone.checkpoint "
            "(relative paths are taken from the current working directory)"
        )
    try:
        obj = torch.load(file, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        if trust:
            raise CheckpointError(f"cannot read checkpoint {str(file)!r}: {err}") from err
        raise CheckpointError(
            f"checkpoint {str(file)!r} contains pickled Python objects beyond tensors, which "
            "weights_only loading refuses. If you trust the file, set "
            "backbone.trust_checkpoint=true (trust_checkpoint=True); loading it runs arbitrary "
            f"code. Details: {str(err).splitlines()[0]}"
        ) from err
    except Exception as err:  # torch.load fails in many ways on corrupt or foreign files
        raise CheckpointError(
            f"cannot read checkpoint {str(file)!r} with torch.load (is it a PyTorch file, "
            f"complete and uncorrupted?): {type(err).__name__}: {err}"
        ) from err
    return _extract_state_dict(obj, file)


def _extract_state_dict(obj: object, file: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"checkpoint {str(file)!r} holds a {type(obj).__name__}, not a state dict or a dict "
            "containing one under 'state_dict'"
        )
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    non_tensor = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if non_tensor:
        raise CheckpointError(
            f"checkpoint {str(file)!r} is a dict whose entries {non_tensor[:SHOWN]} are not "
            "tensors, and it has no 'state_dict' entry; save model.state_dict() (or a dict with "
            "it under 'state_dict')"
        )
    if not obj:
        raise CheckpointError(f"checkpoint {str(file)!r} holds an empty state dict")
    return {str(k): v for k, v in obj.items()}


def find_prefix(keys: list[str], model_keys: list[str]) -> str:
    """The prefix that, stripped from ``keys``, matches the most of ``model_keys``.

    Ties go to the shortest prefix; ``""`` when nothing matches.
    """
    wanted = set(model_keys)
    votes: Counter[str] = Counter()
    for key in keys:
        parts = key.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in wanted:
                votes[".".join(parts[:i]) + "." if i else ""] += 1
    if not votes:
        return ""
    return min(votes, key=lambda p: (-votes[p], len(p)))


def load_into_backbone(
    backbone: Backbone, state: Mapping[str, torch.Tensor], *, source: str = "checkpoint"
) -> None:
    """Load ``state`` into ``backbone.net``, stripping the key prefix that fits it.

    ``normalize.mean``/``normalize.std`` saved beside the weights (same prefix, ``net.`` replaced
    by ``normalize.``) are checked against the backbone's own; a mismatch, or any missing,
    unexpected or wrongly shaped key raises a ``CheckpointError`` naming the offenders.
    """
    own = backbone.net.state_dict()
    prefix = find_prefix(list(state), list(own))
    weights: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    norm_prefix = prefix[: -len("net.")] + "normalize." if prefix.endswith("net.") else None
    for key, value in state.items():
        if key.startswith(prefix):
            weights[key[len(prefix) :]] = value
        elif norm_prefix is not None and key.startswith(norm_prefix):
            _check_normalization(backbone, key[len(norm_prefix) :], value, source)
        else:
            unexpected.append(key)
    unexpected += [prefix + k for k in weights if k not in own]
    missing = [k for k in own if k not in weights and not k.endswith("num_batches_tracked")]
    mismatched = [
        f"{prefix}{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in weights and weights[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        lines = [f"{source} does not fit backbone {backbone.name!r}"]
        if prefix:
            lines[0] += f" (after stripping the key prefix {prefix!r})"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        ):
            if keys:
                more = f" ... and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
                lines.append(f"  {len(keys)} {label}: {', '.join(keys[:SHOWN])}{more}")
        lines.append(
            "Check that backbone.name, num_classes and kwargs match the architecture the "
            "checkpoint was saved from."
        )
        raise CheckpointError("\n".join(lines))
    backbone.net.load_state_dict(weights)


def _check_normalization(backbone: Backbone, name: str, value: torch.Tensor, source: str) -> None:
    own = getattr(backbone.normalize, name, None)
    if not isinstance(own, torch.Tensor):
        raise CheckpointError(f"{source} has an unknown normalization entry {name!r}")
    if own.shape != value.shape or not torch.allclose(own, value.to(own.dtype), atol=1e-6):
        raise CheckpointError(
            f"{source} was saved with normalize.{name}={value.flatten().tolist()} but the "
            f"backbone uses {own.tolist()}; pass the checkpoint's mean and std "
            "(backbone.mean / backbone.std)"
        )
