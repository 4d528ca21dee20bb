"""Gradient-based confidence scores: GradNorm, Purview and GradTrust (docs/guides/scores.md).

Scores are confidences (higher = more in-distribution / more trustworthy) of shape ``(B,)``, on
the device of the inputs. Last-layer gradients are per sample, in closed form: for a head
``z = W h + b`` and a loss with gradient ``g = dL/dz`` at the logits, ``dL/dW = g h^T`` and
``dL/db = g``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from introspect.gradients.extract import loss_gradient
from introspect.gradients.general import check_per_sample_inputs, select_parameters
from introspect.scores.output import check_logits

GRADTRUST_FORMS = ("released", "paper")
PURVIEW_PARTS = ("initial", "final")


def _check_penultimate(logits: torch.Tensor, penultimate: torch.Tensor) -> None:
    check_logits(logits)
    if penultimate.ndim != 2 or penultimate.shape[0] != logits.shape[0]:
        raise ValueError(
            f"penultimate must be (batch, D) with the batch of the logits {tuple(logits.shape)}, "
            f"got {tuple(penultimate.shape)}"
        )


def gradnorm(logits: torch.Tensor, penultimate: torch.Tensor, *, T: float = 1.0) -> torch.Tensor:
    """GradNorm (Huang et al. 2021): L1 norm of the last-layer weight gradient of
    ``KL(uniform || softmax(z / T))``, higher for in-distribution inputs.

    The gradient is ``(p - u) h^T / T`` with ``p = softmax(z / T)`` and ``u = 1/N``, so its
    entry-wise L1 norm is ``||p - u||_1 ||h||_1 / T``. ``penultimate`` is the head input ``h``.
    """
    _check_penultimate(logits, penultimate)
    if T <= 0:
        raise ValueError(f"temperature T must be positive, got {T}")
    p = torch.softmax(logits / T, dim=1)
    deviation = (p - 1.0 / logits.shape[1]).abs().sum(1)
    return deviation * penultimate.abs().sum(1) / T


# ---------------------------------------------------------------- Purview


def purview_last_layer(logits: torch.Tensor, penultimate: torch.Tensor) -> torch.Tensor:
    """Purview gradient norms of the last layer: ``(B, 2)`` squared L2 norms of the weight and
    the bias gradient of BCE-with-logits against the all-ones label (averaged over the N
    classes, as ``nn.BCEWithLogitsLoss`` on one sample). Larger norms = less familiar input."""
    _check_penultimate(logits, penultimate)
    g = loss_gradient(logits, torch.ones_like(logits), "bce")
    bias = g.square().sum(1)
    return torch.stack([bias * penultimate.square().sum(1), bias], dim=1)


def purview_features(
    model: nn.Module,
    images: torch.Tensor,
    params: Sequence[str] | str | None = None,
    *,
    chunk_size: int = 16,
) -> torch.Tensor:
    """Purview feature vectors (Lee et al., IEEE Access 2023): ``(B, P)`` squared L2 norms of the
    per-sample gradients of every selected parameter tensor, in ``model.named_parameters()``
    order, for BCE-with-logits of ``model(x_i)`` against the all-ones label (averaged over the
    classes).

    ``params``: parameter names or module prefixes (see ``per_sample_grads``); ``None`` = all
    parameters. Samples are processed ``chunk_size`` at a time. The model must be in eval mode
    when it has BatchNorm layers; parameters are neither modified nor given a ``.grad``. Works
    under ``torch.inference_mode``.
    """
    check_per_sample_inputs(model, images, chunk_size, "computing purview features")
    all_names = [name for name, _ in model.named_parameters()]
    names = all_names if params is None else select_parameters(model, params)
    with torch.inference_mode(False), torch.no_grad():
        x_all = images.clone() if images.is_inference() else images
        fixed = {n: p.detach() for n, p in model.named_parameters()}
        fixed.update({n: b.detach() for n, b in model.named_buffers()})
        selected = {n: fixed.pop(n) for n in names}

        def loss_of(weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            logits = functional_call(model, {**fixed, **weights}, (x[None],))
            return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))

        def norms_of(weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            g = grad(loss_of)(weights, x)
            return torch.stack([g[n].square().sum() for n in names])

        per_sample = vmap(norms_of, in_dims=(None, 0))
        rows = [
            per_sample(selected, x_all[start : start + chunk_size])
            for start in range(0, images.shape[0], chunk_size)
        ]
    return torch.cat(rows)


def purview_score(norms: torch.Tensor, part: str = "final") -> torch.Tensor:
    """The released re-implementation's scalar Purview score: minus the mean of the squared
    gradient norms ``(B, P)`` (``purview_features``) of one part of the parameter list, so higher
    = smaller gradients = more in-distribution.

    With ``j = P - 1`` the parts are ``norms[:, :floor(j/2)]`` (``"initial"``) and
    ``norms[:, ceil(j/2):]`` (``"final"``), exactly as released; for an even P the middle tensor
    ``floor(j/2)`` belongs to neither part.
    """
    if norms.ndim != 2:
        raise ValueError(f"norms must be (batch, num_params), got {tuple(norms.shape)}")
    j = norms.shape[1] - 1
    if part == "initial":
        chosen = norms[:, : j // 2]
    elif part == "final":
        chosen = norms[:, (j + 1) // 2 :]
    else:
        raise ValueError(f"part must be one of {PURVIEW_PARTS}, got {part!r}")
    if chosen.shape[1] == 0:
        raise ValueError(f"{norms.shape[1]} parameter tensors leave the {part!r} part empty")
    return -chosen.mean(1)


class PurviewDetector(nn.Module):
    """The Purview detector ``H``: a small classifier on log Purview norm vectors that tells
    in-distribution inputs from challenging ones (OOD, adversarial, corrupted).

    Inputs are ``(B, P)`` squared gradient norms (``purview_features``); they are log-transformed
    and standardized with statistics of the training data given to ``fit``. ``hidden=()`` is
    logistic regression. ``forward`` returns the logit of "in-distribution", a confidence.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, num_params: int, hidden: Sequence[int] = (64,)) -> None:
        super().__init__()
        widths = [num_params, *hidden]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], 1))
        self.net = nn.Sequential(*layers)
        self.register_buffer("mean", torch.zeros(num_params))
        self.register_buffer("std", torch.ones(num_params))

    @staticmethod
    def log_norms(norms: torch.Tensor) -> torch.Tensor:
        """``log(norms)``, with norms clamped below at 1e-30 (an exactly zero gradient)."""
        return norms.clamp_min(1e-30).log()

    def forward(self, norms: torch.Tensor) -> torch.Tensor:
        """In-distribution logits ``(B,)`` of squared gradient norms ``(B, P)``."""
        x = (self.log_norms(norms) - self.mean) / self.std
        return self.net(x).squeeze(1)

    def fit(
        self,
        in_features: torch.Tensor,
        out_features: torch.Tensor,
        *,
        epochs: int = 300,
        lr: float = 1e-2,
        weight_decay: float = 1e-4,
    ) -> PurviewDetector:
        """Train on norms of in-distribution (label 1) and challenging (label 0) inputs with
        full-batch Adam, the two classes weighted equally; returns ``self`` in eval mode."""
        if in_features.ndim != 2 or out_features.ndim != 2:
            raise ValueError("in_features and out_features must be (samples, num_params)")
        if min(len(in_features), len(out_features)) == 0:
            raise ValueError("fit needs at least one in-distribution and one challenging sample")
        with torch.inference_mode(False), torch.enable_grad():
            x_in = in_features.detach().clone().to(self.mean)
            x_out = out_features.detach().clone().to(self.mean)
            logs = self.log_norms(torch.cat([x_in, x_out]))
            self.mean.copy_(logs.mean(0))
            self.std.copy_(logs.std(0, correction=0).clamp_min(1e-6))
            optimizer = torch.optim.Adam(self.net.parameters(), lr=lr, weight_decay=weight_decay)
            self.train()
            for _ in range(epochs):
                optimizer.zero_grad()
                loss_in = F.softplus(-self(x_in)).mean()  # BCE-with-logits, label 1
                loss_out = F.softplus(self(x_out)).mean()  # label 0
                (0.5 * (loss_in + loss_out)).backward()
                optimizer.step()
        return self.eval()


# ---------------------------------------------------------------- GradTrust


def gradtrust(logits: torch.Tensor, *, form: str = "released", k: int = 3) -> torch.Tensor:
    """GradTrust (Prabhushankar & AlRegib, MIPR 2024): higher = more trustworthy, the orientation
    of both the paper ("the larger the required change, the larger the trust") and the code.

    Both forms use the gradient energies ``E_c = var_j(G_cj^2)`` of the rows of
    ``G = dL/dW``, the last-layer weight gradient of ``L = MSE(z, 1/N)`` (per sample). Since
    ``G_cj = (2/N)(z_c - 1/N) h_j``, ``E_c = (z_c - 1/N)^4 * 16/N^4 * var_j(h_j^2)``; the factor
    cancels in every ratio below (when ``var_j(h_j^2) > 0``), so only the logits are needed.

    - ``form="released"`` (the authors' code): ``max_c E_c / mean_c E_c``, in ``[1, N]``; the
      maximum is over all classes, usually but not necessarily the predicted one.
    - ``form="paper"`` (the paper's description): the predicted class's energy
      ``E_P`` (``P = argmax z``) over the mean energy of the top-``k`` counterfactual classes,
      the ``k`` classes with the next-largest logits (all ``N - 1`` others when ``k >= N``).
      The paper gives no value of ``k``; 3 is this package's default. "Gradients of class c"
      are read as row ``c`` of the released gradient; separate one-hot cross-entropy gradients
      would give ``||p - e_P||^2 / mean_Q ||p - e_Q||^2``, which falls as confidence rises.
    """
    check_logits(logits)
    energy = (logits.to(torch.float64) - 1.0 / logits.shape[1]).pow(4)
    if form == "released":
        score = energy.amax(1) / energy.mean(1)
    elif form == "paper":
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        ranked = logits.topk(min(k + 1, logits.shape[1]), dim=1).indices
        ranked_energy = energy.gather(1, ranked)
        score = ranked_energy[:, 0] / ranked_energy[:, 1:].mean(1)
    else:
        raise ValueError(f"form must be one of {GRADTRUST_FORMS}, got {form!r}")
    return score.to(logits.dtype)
