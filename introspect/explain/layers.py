"""The layer an explanation looks at: resolved from a module or a dotted path, and recorded."""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from introspect.explain.errors import ExplanationError

LayerSpec = nn.Module | str | None


def resolve_layer(model: nn.Module, layer: LayerSpec) -> nn.Module | None:
    """The module ``layer`` designates in ``model`` (``None`` stays ``None``: the default layer).

    A string is a dotted attribute path (``"layer3"``, ``"features.0.0"``) looked up in
    ``model`` and, when ``model`` has a ``net`` submodule (``introspect.backbones.Backbone``),
    in ``model.net``. Raises ``ExplanationError`` for a path that names no submodule.
    """
    if layer is None or isinstance(layer, nn.Module):
        return layer
    if not isinstance(layer, str) or not layer:
        raise ExplanationError(
            f"layer must be an nn.Module, a dotted path such as 'layer3', or None; got {layer!r}"
        )
    roots = [model]
    net = getattr(model, "net", None)
    if isinstance(net, nn.Module):
        roots.append(net)
    for root in roots:
        try:
            return root.get_submodule(layer)
        except AttributeError:
            continue
    names = [name for root in roots for name, _ in root.named_modules() if name]
    close = difflib.get_close_matches(layer, names, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ExplanationError(f"the model has no layer {layer!r}.{hint}")


class LayerCapture:
    """Context manager recording the activations of the explained layer in a forward pass.

    The layer is ``layer`` resolved in ``model`` or, for ``None``, the last ``nn.Conv2d``
    executed by the forward pass. A layer called several times is recorded at its last call.
    The recorded tensor keeps its values even if later operations of the model work in place.
    Hooks are removed on exit, also on error.
    """

    def __init__(self, model: nn.Module, layer: LayerSpec) -> None:
        target = resolve_layer(model, layer)
        names = {module: name for name, module in model.named_modules()}
        if target is None:
            self._modules = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
            if not self._modules:
                raise ExplanationError(
                    "the model has no nn.Conv2d layer to explain by default; pass layer= "
                    "(a module or its dotted path)"
                )
            self._description = "the last executed nn.Conv2d"
        else:
            self._modules = [target]
            name = names.get(target)
            self._description = (
                f"layer {name!r}" if name is not None else "the given layer (not part of the model)"
            )
        self._handles: list[RemovableHandle] = []
        self._output: Any = None
        self._ran = False

    def __enter__(self) -> LayerCapture:
        try:
            for module in self._modules:
                self._handles.append(module.register_forward_hook(self._hook))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        self._ran = True
        self._output = output
        # The model continues with a copy, so in-place operations cannot alter the record.
        return output.clone() if isinstance(output, torch.Tensor) else None

    def activations(self) -> torch.Tensor:
        """The recorded ``(B, K, h, w)`` activations; ``ExplanationError`` if there are none."""
        if not self._ran:
            raise ExplanationError(
                f"{self._description} did not run in the model's forward pass; pick a layer "
                "the forward pass uses"
            )
        out = self._output
        if not isinstance(out, torch.Tensor) or out.ndim != 4:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ExplanationError(
                f"{self._description} outputs {shape}, not a (B, K, h, w) feature map; pick a "
                "convolutional layer or block"
            )
        return out
