"""Feature denoising (Xie et al. 2019, "Feature Denoising for Improving Adversarial
Robustness"): a non-local means block ``y = x + BN(conv1x1(NLM(x)))`` inserted after residual
stages of a network, here after every ``layer<k>`` stage of a ResNet."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import nn

OPERATIONS = ("gaussian", "dot")


def non_local_means(
    x: torch.Tensor, theta: torch.Tensor, phi: torch.Tensor, operation: str
) -> torch.Tensor:
    """Non-local means of feature map ``x`` (B, C, H, W): position i becomes
    ``sum_j w_ij x_j`` with affinities from ``theta`` (B, E, H, W) at i and ``phi`` at j.

    ``gaussian``: ``w_ij = softmax_j(theta_i . phi_j / sqrt(E))`` (the embedded Gaussian);
    ``dot``: ``w_ij = theta_i . phi_j / (H W)``.
    """
    b, c, h, w = x.shape
    t = theta.flatten(2)  # (B, E, N)
    p = phi.flatten(2)
    affinity = torch.einsum("bei,bej->bij", t, p)  # (B, N, N)
    if operation == "gaussian":
        weights = torch.softmax(affinity / math.sqrt(t.shape[1]), dim=-1)
    elif operation == "dot":
        weights = affinity / (h * w)
    else:
        raise ValueError(f"unknown non-local operation {operation!r}; valid: {OPERATIONS}")
    out = torch.einsum("bij,bcj->bci", weights, x.flatten(2))
    return out.reshape(b, c, h, w)


class DenoisingBlock(nn.Module):
    """``x + BN(conv1x1(NLM(x)))`` on ``channels`` channels, as in Xie et al.: the batch norm's
    scale starts at zero, so the block is the identity at initialization and its output scale
    is learnt through the normalization (a zero-initialized convolution without it left
    FGSM-trained ResNet-20s at chance). ``embed``: theta and phi are 1x1 convolutions to
    ``channels // 2`` channels (else both are ``x``)."""

    def __init__(self, channels: int, operation: str = "gaussian", embed: bool = True) -> None:
        super().__init__()
        if operation not in OPERATIONS:
            raise ValueError(f"unknown non-local operation {operation!r}; valid: {OPERATIONS}")
        self.operation = operation
        inner = max(1, channels // 2)
        self.theta = nn.Conv2d(channels, inner, 1, bias=False) if embed else None
        self.phi = nn.Conv2d(channels, inner, 1, bias=False) if embed else None
        self.conv = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The denoised feature map (same shape as ``x``)."""
        theta = self.theta(x) if self.theta is not None else x
        phi = self.phi(x) if self.phi is not None else x
        return x + self.bn(self.conv(non_local_means(x, theta, phi, self.operation)))

    def extra_repr(self) -> str:
        return f"operation={self.operation!r}"


_STAGE = re.compile(r"layer\d+")


def add_denoising_blocks(
    net: nn.Module,
    example: torch.Tensor,
    *,
    operation: str = "gaussian",
    embed: bool = True,
    stages: Sequence[str] | None = None,
) -> list[str]:
    """Append a ``DenoisingBlock`` (as child ``denoise``) to the residual stages of ``net``
    named in ``stages`` (default: all): its top-level ``nn.Sequential`` children named
    ``layer<k>``, whose channel counts are read from one forward pass of ``example``. The
    stages' own parameter names are kept. Returns the stages changed; raises ``ValueError``
    when ``net`` has none or ``stages`` names another."""
    found = {
        name: m
        for name, m in net.named_children()
        if _STAGE.fullmatch(name) and isinstance(m, nn.Sequential)
    }
    if not found:
        raise ValueError(
            f"{type(net).__name__} has no residual stages named layer<k> (nn.Sequential) to add "
            "denoising blocks after; use a ResNet backbone"
        )
    unknown = sorted(set(stages or ()) - set(found))
    if unknown:
        raise ValueError(
            f"no residual stage {', '.join(unknown)} in {type(net).__name__}; "
            f"valid: {', '.join(found)}"
        )
    stages = {n: m for n, m in found.items() if stages is None or n in stages}
    channels: dict[str, int] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, n=name: channels.__setitem__(n, out.shape[1]))
        for name, m in stages.items()
    ]
    try:
        was_training = net.training
        net.eval()
        with torch.no_grad():
            net(example)
        net.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    for name, stage in stages.items():
        stage.add_module("denoise", DenoisingBlock(channels[name], operation, embed))
    return list(stages)
