"""Post-hoc OOD detectors on the released CIFAR ResNet-20, feed-forward (FF, on the backbone's
penultimate features) and introspective (INT, on the hidden features and logits of an
introspective head ``H`` trained here on ``r_x``), against pytorch-ood 0.4.0.

In-distribution: the 1,017 lossless CIFAR-10 test images; OOD sets: the first 1,017 MNIST test
digits (zero-padded to 32x32, grey copied to RGB), uniform noise and Gaussian noise (mean 0.5,
std 0.25, clipped), 1,017 images each. Detectors with statistics and ``H`` are fitted on the
5,170 lossless CIFAR-10 training images. Features are extracted once; every detector is then
fitted and scored on the same features (``fit_features`` / ``score_features``), and so is its
pytorch-ood counterpart, for the time ratio and the agreement. Per set: AUROC, its difference
from the backbone's MSP with a 95 % paired-bootstrap interval, FPR95 both ways. Writes
``benchmarks/results/near_ood.md``. Needs ``../shared/data`` (or ``$INTROSPECT_SHARED_DATA``)::

    python benchmarks/near_ood.py [--epochs 30] [--threads 2] [--resamples 2000]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_ood
import pytorch_ood.detector as pod
import torch
import torch.nn.functional as F

import introspect
from introspect.backbones import load_backbone
from introspect.detect.posthoc import POSTHOC, Fitted
from introspect.gradients.extract import head_output_features
from introspect.gradients.normalize import normalize_features
from introspect.metrics.ood import auroc, fpr95_id, fpr95_ood
from introspect.metrics.paired import paired_auroc_difference
from introspect.models.stage2 import IntrospectiveClassifier
from introspect.scores.model_based import logits_and_penultimate

OPTIONS: dict[str, dict[str, Any]] = {
    "vim": {"d": 32},
    "knn": {"k": 50},
    "react": {"percentile": 0.9},
    "ash": {"variant": "s", "percentile": 0.65},
    "dice": {"p": 0.7},
    "gen": {"gamma": 0.1},
    "she": {},
    "rmd": {},
    "nnguide": {"k": 10},
    "fdbd": {},
}


def _images(path: Path, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    data = np.load(path)
    x, y = torch.from_numpy(data["x"][:n]), torch.from_numpy(data["y"][:n]).long()
    if x.ndim == 3:  # MNIST: pad 28 -> 32, grey -> RGB
        x = F.pad(x, (2, 2, 2, 2))[..., None].expand(-1, -1, -1, 3)
    return x.permute(0, 3, 1, 2).float() / 255, y


def _oracle(name: str, linear: torch.nn.Linear, option: dict[str, Any]) -> Any:
    """pytorch-ood's detector on features (encoder ``None``: fitted and scored on features)."""
    w, b = linear.weight, linear.bias
    maps = {
        "vim": lambda: pod.ViM(None, d=option["d"], w=w, b=b),
        "knn": lambda: pod.KNN(None, k=option["k"]),
        "react": lambda: pod.ReAct(None, linear, percentile=option["percentile"]),
        "ash": lambda: pod.ASH(
            None, lambda z: linear(z.flatten(1)), "ash-s", percentile=option["percentile"]
        ),
        "dice": lambda: pod.DICE(None, w, b, p=option["p"]),
        "gen": lambda: pod.GEN(None, gamma=option["gamma"]),
        "she": lambda: pod.SHE(None, linear),
        "rmd": lambda: pod.RMD(None),
        "nnguide": lambda: pod.NNGuide(None, linear, k=option["k"]),
        "fdbd": lambda: pod.fDBD(None, linear),
    }
    detector = maps[name]()
    detector.to("cpu")
    return detector


def _oracle_scores(
    name: str, detector: Any, fit: Fitted, sets: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """pytorch-ood's outlier scores negated (confidences) of every set."""
    if name == "react":
        detector.fit_feature_maps(fit.z, fit.labels)
    elif name not in ("ash", "gen"):
        detector.fit_features(fit.z, fit.labels)
    out = {}
    for set_name, (z, logits) in sets.items():
        with torch.no_grad():
            if name == "gen":
                out[set_name] = -detector.predict_logits(logits)
            elif name == "react":
                out[set_name] = -detector.predict_feature_maps(z)
            elif name == "ash":
                out[set_name] = -detector.predict_feature_maps(z[:, :, None, None])
            else:
                out[set_name] = -detector.predict_features(z)
    return out


def _timed(fn: Callable[[], Any], repeats: int = 3) -> tuple[Any, float]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def _train_head(
    backbone: torch.nn.Module, r: torch.Tensor, y: torch.Tensor, epochs: int
) -> IntrospectiveClassifier:
    torch.manual_seed(0)
    head = IntrospectiveClassifier(
        backbone, feature_options={}, num_classes=10, in_dim=r.shape[1], hidden=(256, 128)
    )
    opt = torch.optim.AdamW(head.head.parameters(), lr=1e-3, weight_decay=1e-4)
    head.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for rows in torch.randperm(len(r), generator=g).split(128):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(head.classify(r[rows]), y[rows]).backward()
            opt.step()
    return head.eval()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the table (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--out", default="benchmarks/results/near_ood.md")
    parser.add_argument("--limit", type=int, default=None, help="images per set (a smoke run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    shared = Path(os.environ.get("INTROSPECT_SHARED_DATA", "../shared/data"))
    checkpoint = shared / "checkpoints/cifar_resnet/resnet20-12fca82f.th"
    backbone = load_backbone("cifar_resnet20", checkpoint, num_classes=10).eval()
    limit = args.limit
    x_train, y_train = _images(shared / "cifar10-train-lossless-5170.npz", limit and 5 * limit)
    x_test, y_test = _images(shared / "cifar10-test-lossless-1017.npz", limit)
    n = len(x_test)
    g = torch.Generator().manual_seed(0)
    images = {
        "cifar10": x_test,
        "mnist": _images(shared / "mnist-test.npz", n)[0],
        "uniform": torch.rand(n, 3, 32, 32, generator=g),
        "gaussian": (0.5 + 0.25 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 1),
    }
    linear = backbone.net.linear

    def extract(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            parts = [logits_and_penultimate(backbone, b, linear) for b in x.split(256)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    t0 = time.perf_counter()
    train_logits, train_h = extract(x_train)
    feats = {k: extract(v) for k, v in images.items()}
    extract_s = time.perf_counter() - t0
    print(f"features extracted in {extract_s:.0f} s", flush=True)
    accuracy = float((feats["cifar10"][0].argmax(1) == y_test).double().mean())

    def gradient_features(logits: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return normalize_features(head_output_features(logits, h), "l2")

    t0 = time.perf_counter()
    r_train = gradient_features(train_logits, train_h)
    head = _train_head(backbone, r_train, y_train, args.epochs)
    head_s = time.perf_counter() - t0
    print(f"head trained in {head_s:.0f} s", flush=True)
    with torch.no_grad():  # the closed form above is the head's own feature extraction
        torch.testing.assert_close(
            head.features(x_test[:8]), gradient_features(*feats["cifar10"])[:8]
        )
        int_train = head.classify_with_hidden(r_train)
        int_feats = {k: head.classify_with_hidden(gradient_features(*v)) for k, v in feats.items()}
    int_accuracy = float((int_feats["cifar10"][0].argmax(1) == y_test).double().mean())
    int_linear = head.head[-1]

    ff_sets = {k: (h, z) for k, (z, h) in feats.items()}  # (features, logits) by set
    int_sets = {k: (h, z) for k, (z, h) in int_feats.items()}
    sources = {
        "FF": (Fitted(train_h, train_logits, y_train, linear), ff_sets, linear),
        "INT": (Fitted(int_train[1], int_train[0], y_train, int_linear), int_sets, int_linear),
    }
    scores: dict[str, dict[str, torch.Tensor]] = {}
    agreement: dict[str, tuple[float, float, float]] = {}
    skipped: dict[str, str] = {}
    for kind, (fit, sets, lin) in sources.items():
        suffix = "" if kind == "FF" else "_introspective"
        scores[f"msp{suffix}"] = {k: logits.softmax(1).amax(1) for k, (_, logits) in sets.items()}
        scores[f"energy{suffix}"] = {k: logits.logsumexp(1) for k, (_, logits) in sets.items()}
        for name, cls in POSTHOC.items():

            def ours(cls=cls, name=name, fit=fit, sets=sets, lin=lin) -> dict[str, torch.Tensor]:
                det = cls(None, **OPTIONS[name])  # type: ignore[arg-type]  # features given
                det.fit_features(fit)
                with torch.no_grad():
                    return {k: det.score_features(z, lo, lin) for k, (z, lo) in sets.items()}

            def theirs(name=name, fit=fit, sets=sets, lin=lin) -> dict[str, torch.Tensor]:
                return _oracle_scores(name, _oracle(name, lin, OPTIONS[name]), fit, sets)

            print(f"{kind} {name}", flush=True)
            key = f"{name}{suffix}"
            try:
                mine, mine_s = _timed(ours)
            except ValueError as err:  # e.g. SHE: a class without correct training predictions
                skipped[key] = str(err)
                continue
            other, other_s = _timed(theirs)
            scores[key] = mine
            diff = max(
                float(auroc(mine["cifar10"], mine[k]) - auroc(other["cifar10"], other[k]))
                for k in sets
                if k != "cifar10"
            )
            agreement[key] = (diff, other_s / mine_s, mine_s)

    rows = []
    reference = scores["msp"]
    for key, by_set in scores.items():
        cells, aurocs = [], []
        for set_name in images:
            if set_name == "cifar10":
                continue
            s_in, s_out = by_set["cifar10"].double(), by_set[set_name].double()
            a = float(auroc(s_in, s_out))
            aurocs.append(a)
            d = paired_auroc_difference(
                s_in.numpy(), s_out.numpy(), reference["cifar10"].double().numpy(),
                reference[set_name].double().numpy(), resamples=args.resamples,
            )  # fmt: skip
            cells.append(
                f"{100 * a:.2f} | {100 * d.estimate:+.2f} [{100 * d.low:+.2f}, {100 * d.high:+.2f}]"
                f" | {100 * float(fpr95_ood(s_in, s_out)):.1f} | "
                f"{100 * float(fpr95_id(s_in, s_out)):.1f}"
            )
        agree = agreement.get(key)
        extra = (
            f"{100 * agree[0]:+.4f} | {agree[1]:.2f}x ({1000 * agree[2]:.0f} ms)"
            if agree
            else "— | —"
        )
        rows.append(
            (
                float(np.mean(aurocs)),
                f"| {key} | {100 * np.mean(aurocs):.2f} | " + " | ".join(cells) + f" | {extra} |",
            )
        )
    rows.sort(key=lambda r: -r[0])
    ood_sets = [s for s in images if s != "cifar10"]
    header = (
        "| detector | mean AUROC | "
        + " | ".join(
            f"{s} AUROC | {s} ΔAUROC vs MSP [95 % CI] | {s} FPR(OOD)@95%ID | {s} FPR(ID)@95%OOD"
            for s in ood_sets
        )
        + " | max ΔAUROC vs pytorch-ood | pytorch-ood time / ours |"
    )
    sep = "|---" * (header.count("|") - 1) + "|"
    total_s = time.perf_counter() - started
    text = (
        f"""# Post-hoc OOD detectors on the released CIFAR ResNet-20, FF and introspective

Produced by `python benchmarks/near_ood.py --epochs {args.epochs} --resamples {args.resamples}`
in {total_s:.0f} s.

- In-distribution: the 1,017 lossless CIFAR-10 test images (ResNet-20 accuracy
  {100 * accuracy:.2f} %; introspective head H {100 * int_accuracy:.2f} %). OOD: the first 1,017
  MNIST test digits (zero-padded to 32x32, RGB), 1,017 uniform-noise and 1,017 Gaussian-noise
  (0.5 ± 0.25, clipped) images. Fitting: the 5,170 lossless CIFAR-10 training images.
- FF rows: on the backbone's penultimate features (64) and logits. `*_introspective` rows: on
  the input of the last linear layer of H (128) and H's logits; H (MLP 640→256→128→10 on the
  L2-normalized r_x) trained {args.epochs} epochs (AdamW 1e-3, batch 128) on the training
  images, {head_s:.1f} s. Feature extraction of all sets: {extract_s:.1f} s.
- Options: {", ".join(f"{k} {v}" for k, v in OPTIONS.items() if v)}. Values in %.
  ΔAUROC: AUROC minus the backbone's MSP AUROC, paired bootstrap ({args.resamples} resamples).
  FPR(OOD)@95%ID: OOD accepted at 95 % ID recall; FPR(ID)@95%OOD: ID rejected at 95 % OOD
  recall (pytorch-ood's FPR95). Last columns: the largest AUROC difference from pytorch-ood's
  detector over the OOD sets, and the time ratio (fit + score on the same features, best of 3;
  our time in brackets).
- Versions: introspect {getattr(introspect, "__version__", "?")}, torch {torch.__version__},
  pytorch-ood {pytorch_ood.__version__}, Python {platform.python_version()}; hardware:
  {platform.machine()} CPU, {torch.get_num_threads()} threads ({os.cpu_count()} cores, shared).

{header}
{sep}
"""
        + "\n".join(r[1] for r in rows)
        + "\n"
    )
    text += "".join(f"\nNot run: {key} ({why}).\n" for key, why in skipped.items())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
