"""Introspective gradient features ``r_x`` of a classifier's last linear layer (docs/concepts)"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from introspect.backbones.head import resolve_head
from introspect.gradients.factors import GradientFactors
from introspect.gradients.general import (
    check_class_indices,
    check_loss_target,
    per_sample_grads,
    target_rows,
)
from introspect.gradients.normalize import (
    NORMALIZATIONS,
    Standardizer,
    check_normalize,
    normalize_features,
)


@dataclass(frozen=True)
class FeatureSpec:
    """One feature recipe; ``extract_features(model, images, **dataclasses.asdict(spec))``
    computes it.

    ``params=None`` means the last linear layer (closed form); otherwise the names or module
    prefixes of the parameters whose per-sample gradients form the feature.
    """

    loss: str = "ce"
    target: str = "ones"
    per_class: bool = False
    include_bias: bool = False
    normalize: str = "l2"
    params: tuple[str, ...] | str | None = None

    def __post_init__(self) -> None:
        if self.params is not None and not isinstance(self.params, str):
            object.__setattr__(self, "params", tuple(self.params))
        check_options(self.loss, self.target, self.per_class, self.include_bias, self.params)
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")


def check_options(
    loss: str,
    target: str | torch.Tensor,
    per_class: bool,
    include_bias: bool,
    params: Sequence[str] | str | None,
) -> None:
    """Raise a ``ValueError`` naming the fix for an invalid combination of feature options."""
    check_loss_target(loss, target)
    if per_class and not (isinstance(target, str) and target == "ones"):
        raise ValueError(
            "per_class=True takes the gradients for every one-hot target e_0 ... e_{N-1}; leave "
            "target at its default ('ones') or set per_class=False"
        )
    if include_bias and params is not None:
        raise ValueError(
            "include_bias applies to the last linear layer only; with params, name the bias "
            "parameter in params instead"
        )


def feature_dim(spec: FeatureSpec, num_classes: int, in_features: int, has_bias: bool) -> int:
    """Length F of the feature rows ``extract`` returns for ``spec`` on a head ``N x D``."""
    if spec.params is not None:
        raise ValueError(
            "the feature length of a params= recipe depends on the parameter shapes; "
            "read it off the extracted features (features.shape[1])"
        )
    if spec.include_bias and not has_bias:
        raise ValueError("include_bias=True but the head has no bias; set include_bias=False")
    block = num_classes * in_features + (num_classes if spec.include_bias else 0)
    return block * (num_classes if spec.per_class else 1)


@dataclass(frozen=True)
class IntrospectiveFeatures:
    """What one extraction pass gives for a batch of ``B`` images.

    - ``h``: the head input (``(B, D)``, or ``(B, *T, D)`` for a head applied per token);
      ``None`` on the ``params`` path;
    - ``logits``: the model's output ``(B, N)``;
    - ``factors``: the rank-one ``GradientFactors`` of the features (``None`` on the ``params``
      path and for a head applied per token);
    - ``features``: the materialized, normalized rows ``(B, F)`` (``None`` when not asked for).

    All tensors are detached.
    """

    h: torch.Tensor | None
    logits: torch.Tensor
    factors: GradientFactors | None
    features: torch.Tensor | None

    @property
    def probs(self) -> torch.Tensor:
        """Softmax of the logits, ``(B, N)``."""
        return torch.softmax(self.logits, dim=-1)

    def __len__(self) -> int:
        return self.logits.shape[0]


def extract_features(
    model: nn.Module,
    images: torch.Tensor,
    *,
    loss: str = "ce",
    target: str | torch.Tensor = "ones",
    per_class: bool = False,
    include_bias: bool = False,
    normalize: str = "l2",
    head: str | nn.Module | None = None,
    standardizer: Standardizer | None = None,
    params: Sequence[str] | str | None = None,
    materialize: bool = True,
) -> IntrospectiveFeatures:
    """Gradient features of ``images`` with the head input and logits of the same forward pass.

    Feature row ``i`` is the gradient of ``loss(z_i, target_i)`` w.r.t. the weight ``W``
    (``N x D``) of the head (the last ``nn.Linear`` executed, or ``head``: a module or attribute
    path) when only sample ``i`` is backpropagated, flattened row-major; ``z`` are the model's
    output logits.

    - ``loss``: ``"ce"`` (cross-entropy with a probability target), ``"mse"`` or ``"bce"``
      (BCE-with-logits); the last two are averaged over the N classes.
    - ``target``: ``"ones"`` (all-ones, the confounding label), ``"uniform"`` (``1/N``) or an
      int64 tensor of one class index per image (one-hot targets).
    - ``per_class``: the N gradients for targets ``e_0 ... e_{N-1}``, concatenated in class order
      (``N*N*D`` values); ``target`` must stay ``"ones"``.
    - ``include_bias``: append the bias gradient to the weight gradient; with ``per_class`` the
      row is ``[W_0, b_0, W_1, b_1, ...]`` (each class block is its weight gradient, then its bias
      gradient).
    - ``normalize``: ``"none"``, ``"l2"`` (per row) or ``"standardize"`` (needs ``standardizer``
      fitted on training features extracted with ``normalize="none"``).
    - ``params``: instead of the head, the per-sample gradients of these parameters (names or
      module prefixes, see ``per_sample_grads``); needs a real backward per sample, and
      ``head``/``include_bias`` do not apply; gives ``features`` and ``logits`` only.
    - ``materialize``: build the ``(B, F)`` rows; with ``False`` only the rank-one ``factors``
      (``N + D`` values per image) are returned, which ``factors.materialize()`` expands.

    The head gradient takes one forward pass and no backward through the backbone (it is the
    outer product of the loss gradient at the head output with the head input). It works under
    ``torch.no_grad``/``torch.inference_mode``, returns detached tensors, and neither modifies
    parameters nor gives them a ``.grad``. The model's train/eval mode is left as it is: use eval
    mode, since BatchNorm in training mode mixes the samples of a batch (and updates its running
    statistics). Operations between the head and the output must act on each sample separately.
    """
    check_options(loss, target, per_class, include_bias, params)
    check_normalize(normalize, standardizer)
    if params is not None:
        if head is not None:
            raise ValueError(
                "head and params both given: params selects the parameters itself; drop one"
            )
        if not materialize:
            raise ValueError(
                "params= features have no rank-one factors; set materialize=True or drop params"
            )
        raw = _params_features(
            model, images, params=params, loss=loss, target=target, per_class=per_class
        )
        with torch.inference_mode(False), torch.no_grad():
            logits = model(images.clone() if images.is_inference() else images).detach()
        features = normalize_features(raw, normalize, standardizer)
        return IntrospectiveFeatures(None, logits, None, features)
    g, h, logits = _head_gradients(
        model,
        images,
        loss=loss,
        target=target,
        per_class=per_class,
        include_bias=include_bias,
        head=head,
    )
    return _head_features(g, h, logits, include_bias, normalize, standardizer, materialize)


def _head_features(
    g: torch.Tensor,
    h: torch.Tensor,
    logits: torch.Tensor,
    include_bias: bool,
    normalize: str,
    standardizer: Standardizer | None,
    materialize: bool,
) -> IntrospectiveFeatures:
    """The features of the head's output gradients ``g`` and input ``h``: rank-one factors
    where the head sees one input row per image, the (normalized) rows when ``materialize``."""
    rank_one = h.ndim == 2 and g.ndim == 3
    if not rank_one and not materialize:
        raise ValueError(
            f"the head input has shape {tuple(h.shape)}: a head applied per token is not rank "
            "one; set materialize=True for its materialized features"
        )
    factors = (
        GradientFactors.from_parts(
            g, h, include_bias=include_bias, normalize=normalize, standardizer=standardizer
        )
        if rank_one
        else None
    )
    features = (
        normalize_features(_outer(g, h, include_bias), normalize, standardizer)
        if materialize
        else None
    )
    return IntrospectiveFeatures(h, logits, factors, features)


def extract(model: nn.Module, images: torch.Tensor, **options: Any) -> torch.Tensor:
    """The materialized feature rows ``(B, F)`` of ``extract_features(model, images,
    **options)`` (same options)."""
    features = extract_features(model, images, materialize=True, **options).features
    assert features is not None
    return features


def _params_features(
    model: nn.Module,
    images: torch.Tensor,
    *,
    params: Sequence[str] | str,
    loss: str,
    target: str | torch.Tensor,
    per_class: bool,
) -> torch.Tensor:
    """Unnormalized features of the general path (one ``per_sample_grads`` call per target)."""
    if not per_class:
        return per_sample_grads(model, images, params=params, loss=loss, target=target)
    with torch.inference_mode(False), torch.no_grad():
        num_classes = model(images[:1].clone()).shape[-1]
    blocks = [
        per_sample_grads(
            model,
            images,
            params=params,
            loss=loss,
            target=torch.full((images.shape[0],), q, dtype=torch.int64, device=images.device),
        )
        for q in range(num_classes)
    ]
    return torch.cat(blocks, dim=1)


def _head_gradients(
    model: nn.Module,
    images: torch.Tensor,
    *,
    loss: str,
    target: str | torch.Tensor,
    per_class: bool,
    include_bias: bool,
    head: str | nn.Module | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(g, h, logits)`` of one forward pass, detached: the loss gradients at the head output
    ``(B, Q, *T, N)``, the head input ``(B, *T, D)`` and the model's logits."""
    check_options(loss, target, per_class, include_bias, None)

    def gradients(logits: torch.Tensor) -> torch.Tensor:
        return logit_gradients(logits, loss=loss, target=target, per_class=per_class)

    return head_pass(model, images, head=head, include_bias=include_bias, gradients=gradients)


def head_pass(
    model: nn.Module,
    images: torch.Tensor,
    *,
    head: str | nn.Module | None,
    include_bias: bool,
    gradients: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(g, h, outputs)`` of one forward pass, detached: ``gradients(outputs)`` (``(B, Q, N)``
    loss gradients at the model's detached outputs) pulled back to the head output
    (``(B, Q, *T, N_head)``), the head input ``(B, *T, D)`` and the outputs."""
    linear = resolve_head(model, head, images[:1])
    if include_bias and linear.bias is None:
        raise ValueError("include_bias=True but the head has no bias; set include_bias=False")
    with torch.inference_mode(False):
        x = images.clone() if images.is_inference() else images
        h, z_head, outputs = _forward_with_leaf_head(model, linear, x)
        g_outputs = gradients(outputs.detach())
        with torch.enable_grad():
            delta = _pull_back(outputs, z_head, g_outputs)  # (B, Q, *T, N)
    return delta.detach().to(h.dtype), h, outputs.detach()


def logit_gradients(
    logits: torch.Tensor, *, loss: str, target: str | torch.Tensor, per_class: bool
) -> torch.Tensor:
    """``(B, Q, N)`` loss gradients at the logits ``(B, N)``: for the one ``target`` (Q = 1) or,
    with ``per_class``, for every one-hot target (Q = N). Differentiable in ``logits``."""
    batch, num_classes = logits.shape
    rows = logits.unsqueeze(1)  # (B, 1, N), broadcast against (B, Q, N) targets
    if per_class:
        eye = torch.eye(num_classes, dtype=rows.dtype, device=rows.device)
        targets = eye.expand(batch, num_classes, num_classes)
    elif isinstance(target, torch.Tensor):
        check_class_indices(target, batch, num_classes)
        targets = target_rows(target[:, None], rows)
    else:
        targets = target_rows(target, rows)
    return loss_gradient(rows, targets, loss)


def head_output_features(
    logits: torch.Tensor,
    h: torch.Tensor,
    *,
    loss: str = "ce",
    target: str | torch.Tensor = "ones",
    per_class: bool = False,
    include_bias: bool = False,
) -> torch.Tensor:
    """Unnormalized last-layer gradient features when the logits ``(B, N)`` are the head's own
    output and ``h`` its input: the closed form of ``extract``, differentiable in both (e.g. for
    input perturbations through the features)."""
    g = logit_gradients(logits, loss=loss, target=target, per_class=per_class)
    return _outer(g, h, include_bias)


def loss_gradient(logits: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    """Gradient of ``sample_losses(logits, targets, loss)`` w.r.t. each logits row, in closed form.

    ``ce``: ``softmax(z) * sum(t) - t``; ``mse``: ``2 (z - t) / N``; ``bce``:
    ``(sigmoid(z) - t) / N``. ``logits`` and ``targets`` broadcast to ``(..., N)``.
    """
    n = logits.shape[-1]
    if loss == "ce":
        return torch.softmax(logits, dim=-1) * targets.sum(-1, keepdim=True) - targets
    if loss == "mse":
        return (logits - targets) * (2.0 / n)
    if loss == "bce":
        return (torch.sigmoid(logits) - targets) / n
    raise ValueError(f"loss must be one of ce, mse, bce, got {loss!r}")


def _forward_with_leaf_head(
    model: nn.Module, linear: nn.Linear, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``model(x)`` recording the head input ``h`` and making the head output a leaf.

    The backbone runs without autograd; grad mode is switched on from the head output onwards
    (inside the hook; the surrounding ``no_grad`` restores it), so only the operations after the
    head are recorded.
    """
    records: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(_module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if records:
            raise RuntimeError(
                "the head ran more than once in one forward pass; its per-sample gradient is "
                "not an outer product — use params=[...] for the general path"
            )
        leaf = output.detach().requires_grad_()
        records.append((inputs[0].detach(), leaf))
        torch.set_grad_enabled(True)
        return leaf

    handle = linear.register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        handle.remove()
    if not records:
        raise ValueError(
            f"the head ({type(linear).__name__} {tuple(linear.weight.shape)}) did not run in "
            "model(images); pass head= the last linear layer the model executes"
        )
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"model(images) must return a logits tensor, got {type(logits).__name__}; wrap the "
            "model so that its forward returns the logits"
        )
    h, z_head = records[0]
    if h.shape[0] != x.shape[0] or logits.shape[0] != x.shape[0] or logits.ndim != 2:
        raise ValueError(
            f"expected the head input (B, ..., D), and logits (B, N) for B={x.shape[0]} images; "
            f"got {tuple(h.shape)} and {tuple(logits.shape)}"
        )
    if logits is not z_head and logits.grad_fn is None:
        raise ValueError(
            "the model output does not depend differentiably on the head output (is the head "
            "called under no_grad inside forward, or is it not the last linear layer?); "
            "pass head= the layer that produces the logits"
        )
    return h, z_head, logits


def _pull_back(logits: torch.Tensor, z_head: torch.Tensor, g_logits: torch.Tensor) -> torch.Tensor:
    """Map gradients at the logits ``(B, Q, N)`` to the head output: ``(B, Q, *T, N_head)``."""
    if logits is z_head:
        return g_logits
    q = g_logits.shape[1]
    pulled = []
    for k in range(q):
        (d,) = torch.autograd.grad(
            logits, z_head, grad_outputs=g_logits[:, k], retain_graph=k + 1 < q, allow_unused=True
        )
        if d is None:
            raise ValueError(
                "the model output does not depend on the head output; pass head= the layer "
                "that produces the logits"
            )
        pulled.append(d)
    return torch.stack(pulled, dim=1)


def _outer(delta: torch.Tensor, h: torch.Tensor, include_bias: bool) -> torch.Tensor:
    """Rows ``[vec(delta_q h^T) (, delta_q)]`` for q = 1..Q, summed over any token dims."""
    batch, q = delta.shape[:2]
    tokens_h = h.reshape(batch, -1, h.shape[-1])
    tokens_d = delta.reshape(batch, q, -1, delta.shape[-1]).to(h.dtype)
    weight = torch.einsum("bqtn,btd->bqnd", tokens_d, tokens_h).reshape(batch, q, -1)
    if include_bias:
        weight = torch.cat([weight, tokens_d.sum(2)], dim=2)
    return weight.reshape(batch, -1)
