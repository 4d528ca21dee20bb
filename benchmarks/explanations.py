"""Explanations of the released CIFAR ResNet-20 on the lossless CIFAR-10 test images.

(1) Agreement with the reference libraries (Captum, pytorch-grad-cam) on the first --agree
images: max |ours - reference| relative to max |reference| and the mean per-image Pearson
correlation, per method. (2) The faithfulness table of every map method (deletion and
insertion AUC of the predicted class's probability, seconds per image for the map) on the
first --n images and (3) the VOICE IoU/SNR of correct and incorrect predictions on the first
--voice-n images, as ``python evaluate.py explain-eval`` computes them for a run. Usage::

    python benchmarks/explanations.py --n 50 --agree 8 --voice-n 1017 --threads 2
        [--parts agreement,faithfulness,voice] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from introspect.backbones import load_backbone
from introspect.explain import (
    MAP_METHODS,
    evaluate_faithfulness,
    evaluate_voice,
    gradcam,
    gradcam_plus_plus,
    integrated_gradients,
    lime,
    occlusion,
    random_map,
    smoothgrad,
    superpixels,
)
from introspect.explain.faithfulness import format_faithfulness
from introspect.explain.perturbation import lime_samples
from introspect.jobs.explain import format_voice

SHARED = Path(os.environ.get("INTROSPECT_SHARED_DATA", Path(__file__).parents[2] / "shared/data"))
CHECKPOINT = SHARED / "checkpoints" / "cifar_resnet" / "resnet20-12fca82f.th"
LAYER = "layer3"


def images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = np.load(SHARED / "cifar10-test-lossless-1017.npz")
    x = torch.from_numpy(data["x"][:n]).permute(0, 3, 1, 2).float() / 255
    return x, torch.from_numpy(data["y"][:n]).long()


def compare(ours: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Max abs difference relative to the reference's max magnitude, mean Pearson r."""
    ours, reference = ours.double().flatten(1), reference.double().flatten(1)
    scale = float(reference.abs().max())
    rs = [
        float(np.corrcoef(a.numpy(), b.numpy())[0, 1]) for a, b in zip(ours, reference, strict=True)
    ]
    return {
        "max_abs_diff_relative": float((ours - reference).abs().max()) / scale,
        "mean_pearson_r": float(np.mean(rs)),
        "images": len(ours),
    }


def agreement(model: torch.nn.Module, x: torch.Tensor) -> dict[str, dict[str, float]]:
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import IntegratedGradients, Lime, NoiseTunnel, Occlusion, Saliency
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with torch.no_grad():
        target = model(x).argmax(1)
    probs = lambda z: F.softmax(model(z), dim=1)  # noqa: E731
    rows: dict[str, dict[str, float]] = {}

    def library_cam(kind: Any, layer: torch.nn.Module) -> torch.Tensor:
        with kind(model=model, target_layers=[layer]) as explainer:
            maps = explainer(x, targets=[ClassifierOutputTarget(int(t)) for t in target])
        return torch.from_numpy(maps)

    for name, layer_name in (("layer3 (8x8, resized)", LAYER), ("layer1 (32x32)", "layer1")):
        layer = model.get_submodule(f"net.{layer_name}")
        rows[f"Grad-CAM, {name} vs pytorch-grad-cam"] = compare(
            gradcam(model, x, layer=layer_name, target=target), library_cam(GradCAM, layer)
        )
        rows[f"Grad-CAM++, {name} vs pytorch-grad-cam"] = compare(
            gradcam_plus_plus(model, x, layer=layer_name, target=target),
            library_cam(GradCAMPlusPlus, layer),
        )
    ig = IntegratedGradients(model).attribute(x, target=target, n_steps=32).sum(1)
    rows["Integrated Gradients (32 Gauss-Legendre steps) vs Captum"] = compare(
        integrated_gradients(model, x, normalize=False, steps=32), ig
    )

    class MaxSaliency(Saliency):
        """Captum's |gradient|, reduced by the max over channels like our vanilla gradient."""

        def attribute(self, inputs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            grads = Saliency.attribute(self, inputs, abs=True, **kwargs)
            return grads.amax(dim=1, keepdim=True).expand_as(grads)

        attribute.__wrapped__ = attribute  # type: ignore[attr-defined]  # NoiseTunnel calls it

    seen: list[torch.Tensor] = []
    handle = model.register_forward_pre_hook(lambda m, i: seen.append(i[0].detach().clone()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tunnel = NoiseTunnel(MaxSaliency(model)).attribute(
            x, nt_type="smoothgrad", nt_samples=16, stdevs=0.15, target=target
        )
    handle.remove()
    noisy = torch.cat(seen).view(len(x), 16, *x.shape[1:])
    noise = (noisy - x[:, None]).transpose(0, 1)
    rows["SmoothGrad (16 samples, Captum's noise) vs Captum NoiseTunnel"] = compare(
        smoothgrad(model, x, normalize=False, noise=noise), tunnel[:, 0]
    )
    base = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    occ = Occlusion(probs).attribute(
        x, sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4), baselines=base, target=target
    )
    rows["occlusion (8x8, stride 4, mean colour) vs Captum"] = compare(
        occlusion(model, x, normalize=False), occ[:, 0]
    )
    ours, refs = [], []
    for b in range(min(len(x), 8)):
        xb = x[b : b + 1]
        segments = superpixels(xb, 50)
        z = lime_samples(300, int(segments.max()) + 1, torch.Generator().manual_seed(0))

        def perturb(inputs: torch.Tensor, z: torch.Tensor = z, **kwargs: object):
            for row in z:
                yield row[None].long()

        def similarity(original: Any, perturbed: Any, kept: torch.Tensor, **kwargs: Any) -> float:
            distance = 1 - torch.sqrt(kept.float().sum() / kept.numel())
            return float(torch.exp(-(distance**2) / (2 * 0.25**2)))

        explainer = Lime(
            probs,
            interpretable_model=SkLearnRidge(alpha=1.0),
            similarity_func=similarity,
            perturb_func=perturb,
        )
        ref = explainer.attribute(
            xb,
            target=target[b : b + 1],
            n_samples=300,
            feature_mask=segments[:, None],
            baselines=xb.mean(dim=(2, 3), keepdim=True).expand_as(xb),
            show_progress=False,
        )
        refs.append(ref[:, 0])
        ours.append(lime(model, xb, normalize=False, samples=300, segments=segments))
    rows["LIME (300 samples, same superpixels) vs Captum"] = compare(
        torch.cat(ours), torch.cat(refs)
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="images in the faithfulness table")
    parser.add_argument("--agree", type=int, default=8, help="images in the agreement table")
    parser.add_argument("--voice-n", type=int, default=1017, help="images in the VOICE table")
    parser.add_argument("--thresholds", default="0.1,0.5", help="VOICE thresholds")
    parser.add_argument("--parts", default="agreement,faithfulness,voice", help="what to run")
    parser.add_argument("--batch", type=int, default=25, help="images per map call")
    parser.add_argument("--steps", type=int, default=32, help="deletion/insertion steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_backbone("cifar_resnet20", CHECKPOINT, num_classes=10).eval()
    versions = {
        "torch": torch.__version__,
        "captum": _version("captum"),
        "grad-cam": _version("grad-cam"),
        "scikit-image": _version("scikit-image"),
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
    }
    print(json.dumps(versions))
    results: dict[str, Any] = {"versions": versions}

    parts = set(args.parts.split(","))
    if "agreement" in parts:
        x, _ = images(args.agree)
        started = time.perf_counter()
        results["agreement"] = agreement(model, x)
        print_agreement(results["agreement"])
        print(f"(agreement in {time.perf_counter() - started:.0f} s)")
    if "faithfulness" in parts:
        x, y = images(args.n)
        batches = [
            (x[i : i + args.batch], y[i : i + args.batch]) for i in range(0, args.n, args.batch)
        ]
        methods = dict(MAP_METHODS) | {"random": random_map}
        started = time.perf_counter()
        table = evaluate_faithfulness(
            model,
            batches,
            methods,
            layer=LAYER,
            steps=args.steps,
            progress=lambda text: print(f"  faithfulness: {text}", flush=True),
        )
        results["faithfulness"] = table
        print(f"\nn = {args.n}, layer {LAYER}, {args.steps} steps")
        print(format_faithfulness(table))
        print(f"(faithfulness in {time.perf_counter() - started:.0f} s)")
    if "voice" in parts:
        x, y = images(args.voice_n)
        batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, args.voice_n, 64)]
        results["voice"] = {}
        for threshold in (float(t) for t in args.thresholds.split(",")):
            started = time.perf_counter()
            summary = evaluate_voice(model, batches, LAYER, threshold=threshold).summary()
            results["voice"][str(threshold)] = summary
            print(
                f"\nVOICE, n = {args.voice_n}, layer {LAYER}\n" + format_voice(summary, threshold)
            )
            print(f"(VOICE in {time.perf_counter() - started:.0f} s)")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


def print_agreement(rows: dict[str, dict[str, float]]) -> None:
    print("\n| method | max abs diff / max abs ref | mean Pearson r | images |")
    print("|---|---:|---:|---:|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['max_abs_diff_relative']:.2e} | {row['mean_pearson_r']:.6f} | "
            f"{row['images']} |"
        )


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
