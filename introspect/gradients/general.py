"""Losses and targets of the gradient features, and per-sample gradients of any parameter set."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.modules.batchnorm import _BatchNorm

LOSSES = ("ce", "mse", "bce")
TARGETS = ("ones", "uniform")


def check_loss_target(loss: str, target: str | torch.Tensor) -> None:
    """Raise a ``ValueError`` naming the valid choices for a bad ``loss`` or ``target``."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if isinstance(target, str):
        if target not in TARGETS:
            raise ValueError(
                f"target must be one of {TARGETS} or an int64 tensor of class indices, "
                f"got {target!r}"
            )
        return
    if not isinstance(target, torch.Tensor):
        raise TypeError(
            f"target must be one of {TARGETS} or an int64 tensor of class indices, "
            f"got {type(target).__name__}"
        )
    if target.dtype != torch.int64 or target.ndim != 1:
        raise ValueError(
            "a tensor target must hold one int64 class index per image (shape (B,)), got dtype "
            f"{target.dtype} and shape {tuple(target.shape)}"
        )


def check_class_indices(target: torch.Tensor, batch: int, num_classes: int) -> None:
    """Check a class-index target's length and range against the batch and the logits."""
    if target.numel() != batch:
        raise ValueError(f"target has {target.numel()} class indices for {batch} images")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(
            f"class indices must lie in [0, {num_classes}), got range "
            f"[{int(target.min())}, {int(target.max())}]"
        )


def target_rows(target: str | torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Target vectors shaped like ``logits`` (``(..., N)``): all-ones, uniform ``1/N``, or one-hot
    rows of the class indices ``target`` (shape ``logits.shape[:-1]``)."""
    if isinstance(target, str):
        value = 1.0 if target == "ones" else 1.0 / logits.shape[-1]
        return torch.full_like(logits, value)
    classes = torch.arange(logits.shape[-1], device=logits.device)
    return (classes == target.to(logits.device)[..., None]).to(logits.dtype)


def sample_losses(logits: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    """Loss of every row of ``(..., N)`` logits against its target row, shape ``(...)``.

    ``ce``: cross-entropy with a probability target, ``-sum_c t_c log softmax(z)_c``;
    ``mse`` / ``bce``: squared error / BCE-with-logits, averaged over the N classes.
    """
    if loss == "ce":
        flat = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            targets.reshape(-1, targets.shape[-1]),
            reduction="none",
        )
        return flat.reshape(logits.shape[:-1])
    if loss == "mse":
        return F.mse_loss(logits, targets, reduction="none").mean(-1)
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(-1)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def select_parameters(model: nn.Module, params: Sequence[str] | str) -> list[str]:
    """Names of the parameters selected by ``params``, in ``model.named_parameters()`` order.

    Each entry is a parameter name (``"layer3.0.conv1.weight"``) or a module prefix
    (``"layer3"``: all parameters under it).
    """
    wanted = [params] if isinstance(params, str) else list(params)
    if not wanted:
        raise ValueError("params is empty; name at least one parameter or module prefix")
    names = [name for name, _ in model.named_parameters()]
    chosen: set[str] = set()
    for entry in wanted:
        if not isinstance(entry, str) or not entry:
            raise ValueError(
                f"params entries must be non-empty parameter names or module prefixes, "
                f"got {entry!r}"
            )
        hits = [n for n in names if n == entry or n.startswith(entry + ".")]
        if not hits:
            shown = ", ".join(names[-8:])
            raise ValueError(
                f"{entry!r} names no parameter or module of {type(model).__name__}; "
                f"its last parameters are: {shown}"
            )
        chosen.update(hits)
    return [n for n in names if n in chosen]


def check_per_sample_inputs(
    model: nn.Module, images: torch.Tensor, chunk_size: int, what: str
) -> None:
    """``ValueError`` unless ``chunk_size`` is positive, ``images`` a non-empty batch and no
    BatchNorm layer of ``model`` is in training mode (it would mix the samples of a batch);
    ``what`` names the computation in the message."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    if images.ndim < 1 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty batch, got shape {tuple(images.shape)}")
    training_bn = [n for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.training]
    if training_bn:
        raise ValueError(
            f"BatchNorm layer {training_bn[0]!r} is in training mode, which mixes the samples of "
            f"a batch; call model.eval() before {what}"
        )


def per_sample_grads(
    model: nn.Module,
    images: torch.Tensor,
    *,
    params: Sequence[str] | str,
    loss: str = "ce",
    target: str | torch.Tensor = "ones",
    chunk_size: int = 32,
) -> torch.Tensor:
    """Per-sample gradients of ``loss(model(x_i), target_i)`` w.r.t. the named parameters.

    Row ``i`` of the ``(B, F)`` result is the concatenation, in ``model.named_parameters()``
    order, of the flattened gradients of the parameters selected by ``params`` (names or module
    prefixes) when only sample ``i`` is backpropagated. ``loss`` and ``target`` are as in
    ``extract``. Samples are processed ``chunk_size`` at a time with ``vmap(grad(...))`` to bound
    memory. The model must be in eval mode when it has BatchNorm layers (running statistics are
    used, never updated); parameters are neither modified nor given a ``.grad``.
    """
    check_loss_target(loss, target)
    check_per_sample_inputs(model, images, chunk_size, "taking per-sample gradients")
    names = select_parameters(model, params)
    with torch.inference_mode(False), torch.no_grad():
        x_all = images.clone() if images.is_inference() else images
        everything = {n: p.detach() for n, p in model.named_parameters()}
        everything.update({n: b.detach() for n, b in model.named_buffers()})
        selected = {n: everything.pop(n) for n in names}
        if isinstance(target, torch.Tensor):
            probe = functional_call(model, {**everything, **selected}, (x_all[:1],))
            check_class_indices(target, images.shape[0], probe.shape[-1])
            indices = target.to(images.device)
        else:
            indices = torch.zeros(images.shape[0], dtype=torch.int64, device=images.device)

        def one_sample(
            weights: dict[str, torch.Tensor], x: torch.Tensor, index: torch.Tensor
        ) -> torch.Tensor:
            logits = functional_call(model, {**everything, **weights}, (x[None],))[0]
            t = target_rows(target if isinstance(target, str) else index, logits)
            return sample_losses(logits, t, loss)

        grads_of = vmap(grad(one_sample), in_dims=(None, 0, 0))
        rows = []
        for start in range(0, images.shape[0], chunk_size):
            stop = start + chunk_size
            g = grads_of(selected, x_all[start:stop], indices[start:stop])
            rows.append(torch.cat([g[n].reshape(g[n].shape[0], -1) for n in names], dim=1))
    return torch.cat(rows)
