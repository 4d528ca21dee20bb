"""Conformal set size and selective risk of the introspective head against the feed-forward
network (FF) and the control head (CTL) on the released CIFAR ResNet-20, clean and corrupted.

Stage 2 (introspective and control heads, ``HeadRecipe`` with ``--epochs``) trains on the
5,170 lossless CIFAR-10 training images. The released network saw every training image, so the
calibration split of the conformal sets and temperatures is the even-indexed half of the 1,017
lossless test images (clean); evaluation is the odd-indexed half, clean and under a few
corruption cells of ``introspect.corruptions`` (seed 0).
One table per split from ``introspect.metrics.questions.conformal_selective_table`` for
stage-2 seeds ``--seeds``; written with versions and hardware to ``--out``. Usage::

    python benchmarks/questions.py --shared ../shared/data --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from introspect.backbones import load_backbone
from introspect.corruptions import corrupt
from introspect.metrics.questions import RunLogits, conformal_selective_table
from introspect.stages.heads import fit_heads, loader_features
from introspect.stages.options import FeatureOptions, HeadRecipe

CELLS = (("gaussian_noise", 3), ("gaussian_blur", 3), ("contrast", 3), ("jpeg_compression", 3))
SHORT = {"feedforward": "FF", "introspective": "INT", "control": "CTL"}


def _images(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data = np.load(path)
    x = torch.from_numpy(data["x"]).permute(0, 3, 1, 2).float() / 255
    return x, torch.from_numpy(data["y"].astype(np.int64))


def _loader(x: torch.Tensor, y: torch.Tensor) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=256, shuffle=False)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/questions.md"))
    args = parser.parse_args(argv)
    checkpoint = args.shared / "checkpoints/cifar_resnet/resnet20-12fca82f.th"
    train_file = args.shared / "cifar10-train-lossless-5170.npz"
    test_file = args.shared / "cifar10-test-lossless-1017.npz"
    for path in (checkpoint, train_file, test_file):
        if not path.is_file():
            print(f"error: {path} not found; pass --shared with the shared data folder")
            return 2
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    started = time.perf_counter()
    backbone = load_backbone("cifar_resnet20", checkpoint, num_classes=10).eval()
    x, y = _images(train_file)
    xt, yt = _images(test_file)
    is_cal = torch.arange(len(yt)) % 2 == 0
    cal = _loader(xt[is_cal], yt[is_cal])
    xt, yt = xt[~is_cal], yt[~is_cal]
    splits = {"clean": _loader(xt, yt)}
    for name, severity in CELLS:
        splits[f"{name}-{severity}"] = _loader(corrupt(xt, name, severity, seed=0), yt)
    features = FeatureOptions()
    train_features = loader_features(backbone, _loader(x, y), features=features)
    recipe = HeadRecipe(epochs=args.epochs)

    def trainer(**overrides: object) -> L.Trainer:
        options = {
            "accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
            "enable_progress_bar": False, "enable_model_summary": False,
            "num_sanity_val_steps": 0,
        }  # fmt: skip
        return L.Trainer(**(options | overrides))

    runs = []
    for seed in args.seeds:
        fitted = fit_heads(
            backbone, train_features, head=recipe, features=features, seed=seed,
            trainer=trainer, calibrate=False,
        )  # fmt: skip
        cal_logits = fitted.predict(cal)
        split_logits = {s: fitted.predict(loader) for s, loader in splits.items()}
        runs.append(
            RunLogits(
                calibration={SHORT[h]: cal_logits[h] for h in SHORT},
                calibration_labels=cal_logits["labels"],
                splits={s: {SHORT[h]: out[h] for h in SHORT} for s, out in split_logits.items()},
                labels={s: out["labels"] for s, out in split_logits.items()},
            )
        )
        print(f"seed {seed}: heads trained and scored, {time.perf_counter() - started:.0f} s")
    table = conformal_selective_table(runs, resamples=args.resamples)
    elapsed = time.perf_counter() - started
    header = [
        "# Conformal sets and selective risk: introspective head vs FF and control",
        "",
        "Command: `python benchmarks/questions.py " + " ".join(argv) + "`",
        "",
        f"Released CIFAR ResNet-20 (`resnet20-12fca82f.th`); stage 2 on {len(y)} lossless "
        f"training images, {args.epochs} epochs, seeds {args.seeds}; calibration split "
        f"{int(is_cal.sum())} lossless test images (even indices, clean); evaluation the "
        f"other {len(yt)} lossless test images, clean and "
        + ", ".join(f"{n} severity {s}" for n, s in CELLS)
        + f" (corruption seed 0); {args.resamples} bootstrap resamples.",
        "",
        f"Environment: python {platform.python_version()}, torch {torch.__version__}, "
        f"lightning {L.__version__}, numpy {np.__version__}, {platform.machine()} "
        f"({os.cpu_count()} CPUs, {torch.get_num_threads()} threads), CPU only; "
        f"total {elapsed:.0f} s.",
        "",
    ]
    text = "\n".join(header) + "\n" + table.markdown()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
