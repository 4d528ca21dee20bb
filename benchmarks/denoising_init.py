"""Why the denoising block has a zero-initialized batch norm: a short FGSM training run of
CIFAR ResNet-20 without denoising blocks, with the blocks as built (``x + BN(conv1x1(NLM))``,
BN scale zero) and with the earlier design (zero-initialized 1x1 convolution, no batch norm).

Each variant: blocks after ``layer2`` and ``layer3``, ``--steps`` SGD steps (lr 0.1, Nesterov,
weight decay 5e-4, batch 128 drawn from the 5,170 lossless training images) on FGSM-from-a-
random-start images (eps 8/255, step 10/255, as ``table1_cpu_denoising``); prints the mean
training loss of the first and last 50 steps and the clean accuracy on the 1,017 lossless test
images. Needs ``../shared/data`` (or ``$INTROSPECT_SHARED_DATA``). Usage::

    python benchmarks/denoising_init.py [--steps 150] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from introspect.attacks import pgd
from introspect.backbones import load_backbone
from introspect.backbones.denoising import DenoisingBlock, add_denoising_blocks

VARIANTS = ("no blocks", "BN scale zero (built)", "zero conv, no BN (earlier)")


def _images(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data = np.load(path)
    return torch.tensor(data["x"]).permute(0, 3, 1, 2).float() / 255, torch.tensor(data["y"]).long()


def _model(variant: str, example: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    model = load_backbone("cifar_resnet20", num_classes=10, input_size=(3, 32, 32))
    if variant != VARIANTS[0]:
        add_denoising_blocks(model.net, example, stages=["layer2", "layer3"])  # type: ignore[arg-type]
    if variant == VARIANTS[2]:
        for block in model.modules():
            if isinstance(block, DenoisingBlock):
                nn.init.zeros_(block.conv.weight)
                block.bn = nn.Identity()  # type: ignore[assignment]
    return model


def main(argv: list[str] | None = None) -> None:
    """Print one line per variant (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shared = Path(os.environ.get("INTROSPECT_SHARED_DATA", "../shared/data"))
    x, y = _images(shared / "cifar10-train-lossless-5170.npz")
    xt, yt = _images(shared / "cifar10-test-lossless-1017.npz")
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {args.steps} steps")
    for variant in VARIANTS:
        model = _model(variant, x[:2])
        opt = torch.optim.SGD(
            model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
        )
        g = torch.Generator().manual_seed(0)
        losses = []
        start = time.perf_counter()
        for _ in range(args.steps):
            idx = torch.randint(0, len(x), (128,), generator=g)
            model.eval()
            adv = pgd(model, x[idx], y[idx], eps=8 / 255, alpha=10 / 255, steps=1, generator=g)
            model.train()
            loss = F.cross_entropy(model(adv), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            acc = (model(xt).argmax(1) == yt).float().mean().item()
        print(
            f"{variant}: loss first/last 50 steps {np.mean(losses[:50]):.3f} / "
            f"{np.mean(losses[-50:]):.3f}, clean test accuracy {100 * acc:.1f} %, "
            f"{time.perf_counter() - start:.0f} s"
        )


if __name__ == "__main__":
    main()
