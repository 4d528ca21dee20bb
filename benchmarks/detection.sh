#!/usr/bin/env bash
# The measured detection tables of docs/results/detection.md:
# the released ResNet-20 and the robust ResNet-4b with a short stage 2 (10 head epochs, no
# control head, no corruption evaluation at training time; the ResNet-4b's head on clean
# features only), then `evaluate.py scores` with the five attacks (5 steps; C&W 10 steps),
# MNIST and uniform noise as OOD sets and every detector, on a seeded subset of MAX_SAMPLES of
# the 1,017 lossless test images (all in-distribution: data.val_fraction=0 at scoring time);
# on the ResNet-4b also four corruptions (CIFAR-10-C noise, CURE-TSR lens blur, dirty lens,
# haze) at levels 1, 3, 5. Sequential.
#   bash benchmarks/detection.sh [OUT_DIR] [MAX_SAMPLES]   (defaults /tmp/detect-runs, 100)
set -euo pipefail
out=${1:-/tmp/detect-runs}
n=${2:-100}
export WANDB_MODE=offline
short=(trainer.enable_progress_bar=false "eval.corruptions=[]" "eval.extra={}"
    stage2.head.epochs=10 stage2.control=false)
[ -f "$out/r20/results.json" ] ||
    python train.py experiment=cifar10_resnet20 run.dir="$out/r20" "${short[@]}"
[ -f "$out/r4b/results.json" ] ||
    python train.py experiment=cifar10_resnet4b_adv run.dir="$out/r4b" "${short[@]}" \
        stage2.augment=none stage2.include_clean=false stage2.passes=1
common=(tag=detect data.val_fraction=0 scores.max_samples=$n scores.trust=false
    "scores.ood=[mnist]" "scores.attacks=[fgsm,bim,pgd,cw,iterll]" scores.attack.steps=5
    scores.attack.cw_steps=10 scores.detectors=true eval.mc_dropout.samples=0
    trainer.enable_progress_bar=false)
/usr/bin/time -f "r20 scores: %e s wall" python evaluate.py scores run="$out/r20" "${common[@]}"
/usr/bin/time -f "r4b scores: %e s wall" python evaluate.py scores run="$out/r4b" "${common[@]}" \
    scores.corruption_detection=true "eval.corruptions=[gaussian_noise,lens_blur,dirty_lens,haze]" \
    "eval.severities=[1,3,5]"
