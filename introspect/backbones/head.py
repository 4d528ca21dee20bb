"""Find a classifier's head (last linear layer executed) and read its input activations."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class BackboneError(ValueError):
    """A backbone that cannot be built or used as asked; the message names the fix."""


class HeadNotFoundError(BackboneError):
    """Raised when a model has no linear layer that could serve as its classification head."""


def get_submodule(model: nn.Module, path: str) -> nn.Module:
    """Return the submodule at a dotted attribute path (``"fc"``, ``"net.layer4.1"``)."""
    if path == "":
        return model
    try:
        return model.get_submodule(path)
    except AttributeError as err:
        names = [n for n, _ in model.named_modules() if n]
        shown = ", ".join(names[-12:])
        raise HeadNotFoundError(
            f"model has no submodule {path!r}; its last submodules are: {shown}"
        ) from err


def find_head(model: nn.Module, example: torch.Tensor) -> str:
    """Return the attribute path of the last ``nn.Linear`` executed when ``model(example)`` runs.

    The model is run once without gradients in its current train/eval mode restored afterwards
    (it is put in eval mode for the dummy pass so BatchNorm statistics are not touched).
    """
    names = {id(m): n for n, m in model.named_modules()}
    executed: list[str] = []
    handles = [
        m.register_forward_hook(lambda mod, _inp, _out: executed.append(names[id(mod)]))
        for m in model.modules()
        if isinstance(m, nn.Linear)
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not executed:
        raise HeadNotFoundError(
            f"{type(model).__name__} executes no nn.Linear layer, so it has no classification "
            "head to take gradients from; give the head explicitly (backbone.head=<attribute "
            "path>) or end the model with an nn.Linear"
        )
    return executed[-1]


def resolve_head(
    model: nn.Module, head: str | nn.Module | None, example: torch.Tensor
) -> nn.Linear:
    """The head: ``head`` itself, the module at path ``head``, or the discovered one."""
    if isinstance(head, nn.Module):
        module = head
    else:
        module = get_submodule(model, head if head is not None else find_head(model, example))
    if not isinstance(module, nn.Linear):
        raise HeadNotFoundError(
            f"the head must be an nn.Linear, got {type(module).__name__}; "
            "point backbone.head at the last linear layer"
        )
    return module


@contextlib.contextmanager
def capture_input(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Context manager collecting the first positional input of every call to ``module``."""
    store: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, inp, _out: store.append(inp[0]))
    try:
        yield store
    finally:
        handle.remove()


def forward_with_head_input(
    model: nn.Module, head: nn.Linear, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(model(images), head input)`` from one forward pass; ``HeadNotFoundError`` unless
    ``head`` runs exactly once. Autograd records the pass as usual."""
    with capture_input(head) as inputs:
        logits = model(images)
    if len(inputs) != 1:
        raise HeadNotFoundError(
            f"the head ran {len(inputs)} times in one forward pass; point head at a linear layer "
            "that runs exactly once"
        )
    return logits, inputs[0]
