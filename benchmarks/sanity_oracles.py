"""Agreement and speed of the explanation sanity checks and BatchBALD against their oracles.

On the released CIFAR ResNet-20 and the first ``--images`` lossless CIFAR-10 test images:
cascading model-parameter randomization (Spearman per layer) against Quantus ``MPRT`` and
max-sensitivity against Quantus ``MaxSensitivity`` on the same perturbations; then BatchBALD
against Baal's on the same MC probabilities and draws. Prints one JSON line per comparison
(largest difference, seconds of each). Usage::

    python benchmarks/sanity_oracles.py --data ../shared/data [--images 16] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import quantus
import torch
from baal.active.heuristics import BatchBALD as BaalBatchBALD

from introspect.active import batchbald
from introspect.backbones import load_backbone
from introspect.explain import gradcam, vanilla_gradient
from introspect.sanity import max_sensitivity, model_randomization, uniform_noise


def _timed(fn, *args, **kwargs):
    started = time.perf_counter()
    value = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return value, time.perf_counter() - started


def _replay(noise: torch.Tensor):
    """A Quantus perturbation function adding ``noise``'s draws in order."""
    draws = iter(noise.flatten(2).cpu().numpy())

    def perturb(arr, indices=None, indexed_axes=None, **_):
        return arr + next(draws)

    return perturb


def _quantus(metric, model, x, target, reference, explain):
    """``metric`` of Quantus on the images ``x``, classes ``target`` and maps ``reference``."""
    return metric(
        model=model,
        x_batch=x.cpu().numpy(),
        y_batch=target.cpu().numpy(),
        a_batch=reference,
        explain_func=explain,
        device=str(x.device),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pool", type=int, default=2000, help="BatchBALD's pool size")
    parser.add_argument("--skip-maps", action="store_true", help="only the BatchBALD comparison")
    args = parser.parse_args()
    device = torch.device(args.device)
    model = load_backbone(
        "cifar_resnet20",
        args.data / "checkpoints" / "cifar_resnet" / "resnet20-12fca82f.th",
        num_classes=10,
    ).eval()
    model = model.to(device)
    data = np.load(args.data / "cifar10-test-lossless-1017.npz")
    x = torch.from_numpy(data["x"][: args.images]).permute(0, 3, 1, 2).float().div(255)
    x = x.to(device)
    with torch.no_grad():
        target = model(x).argmax(1)

    checks = () if args.skip_maps else ((vanilla_gradient, None), (gradcam, "layer3"))
    for method, layer in checks:

        def explain(model, inputs, targets, method=method, layer=layer, **_):
            maps = method(
                model,
                torch.as_tensor(inputs, device=device),
                layer,
                torch.as_tensor(targets, device=device),
                normalize=False,
            )
            return maps[:, None].cpu().numpy()

        ours, ours_s = _timed(model_randomization, method, model, x, layer=layer, seed=1)
        reference = method(model, x, layer, target, normalize=False)[:, None].cpu().numpy()
        metric = quantus.MPRT(seed=0, abs=False, normalise=False, disable_warnings=True)
        theirs, theirs_s = _timed(_quantus, metric, model, x, target, reference, explain)
        want = torch.tensor([theirs[name] for name in ours.layers], dtype=torch.float64)
        got = ours.spearman.cpu()
        both = ~(got.isnan() | want.isnan())
        print(
            json.dumps(
                {
                    "check": f"MPRT {method.__name__}",
                    "layers": len(ours.layers),
                    "images": args.images,
                    "max_abs_rho_difference": float((got - want)[both].abs().max()),
                    "nan_pattern_equal": bool(torch.equal(got.isnan(), want.isnan())),
                    "final_rho": float(got[-1].nanmean()),
                    "ours_s": round(ours_s, 3),
                    "quantus_s": round(theirs_s, 3),
                }
            )
        )
        samples, radius = 10, 0.02
        noise = uniform_noise(x, samples, radius, seed=0)
        ours, ours_s = _timed(
            max_sensitivity, method, model, x, layer=layer, noise=noise, batch_size=160
        )
        metric = quantus.MaxSensitivity(
            nr_samples=samples,
            perturb_func=_replay(noise),
            lower_bound=radius,
            disable_warnings=True,
        )
        theirs, theirs_s = _timed(_quantus, metric, model, x, target, reference, explain)
        relative = np.abs(ours.cpu().numpy() - np.asarray(theirs)) / np.asarray(theirs)
        print(
            json.dumps(
                {
                    "check": f"MaxSensitivity {method.__name__}",
                    "max_relative_difference": float(relative.max()),
                    "mean": float(ours.mean()),
                    "ours_s": round(ours_s, 3),
                    "quantus_s": round(theirs_s, 3),
                }
            )
        )

    probs = (
        2 * torch.randn(20, args.pool, 10, generator=torch.Generator().manual_seed(0))
    ).softmax(-1)
    k, draws = 10, 500
    ours, ours_s = _timed(
        batchbald,
        probs,
        k,
        max_configurations=0,
        draws=draws,
        generator=torch.Generator().manual_seed(3),
    )
    torch.manual_seed(3)
    baal = BaalBatchBALD(num_samples=k - 1, num_draw=draws)
    theirs, theirs_s = _timed(baal.compute_score, probs.double().permute(1, 2, 0).numpy())
    exact, exact_s = _timed(batchbald, probs, k)
    want = torch.from_numpy(theirs[ours.indices.numpy()])
    print(
        json.dumps(
            {
                "check": f"BatchBALD S=20 pool={args.pool} classes=10 k=10 draws=500",
                "same_picks": sorted(np.flatnonzero(theirs).tolist())
                == sorted(ours.indices.tolist()),
                "max_abs_score_difference": float(
                    (ours.joint_entropy - ours.conditional_entropy - want).abs().max()
                ),
                "ours_s": round(ours_s, 3),
                "baal_s": round(theirs_s, 3),
                "ours_default_s": round(exact_s, 3),
                "default_picks_overlap": len(
                    set(exact.indices.tolist()) & set(ours.indices.tolist())
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
