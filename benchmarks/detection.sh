#!/usr/bin/env bash
# The measured detection tables of the README ("Attacks and detection of challenging inputs"):
# the released ResNet-20 and the robust ResNet-4b with a short stage 2 (10 head epochs, no
# control head, no corruption evaluation at training time; the ResNet-4b's head on clean
# features only), then `evaluate.py scores` with the five attacks, the seeds' corruptions
# (CIFAR-10-C and CURE-TSR types) x 5 levels, MNIST and uniform noise as OOD sets, and every
# detector, on a seeded subset of MAX_SAMPLES of the 1,017 lossless test images (all of them
# in-distribution: data.val_fraction=0 at scoring time). Sequential.
#   bash benchmarks/detection.sh [OUT_DIR] [MAX_SAMPLES]   (defaults /tmp/detect-runs, 200)
set -euo pipefail
out=${1:-/tmp/detect-runs}
n=${2:-200}
export WANDB_MODE=offline
short=(trainer.enable_progress_bar=false "eval.corruptions=[]" "eval.extra={}"
    stage2.head.epochs=10 stage2.control=false)
[ -f "$out/r20/results.json" ] ||
    python train.py experiment=cifar10_resnet20 run.dir="$out/r20" "${short[@]}"
[ -f "$out/r4b/results.json" ] ||
    python train.py experiment=cifar10_resnet4b_adv run.dir="$out/r4b" "${short[@]}" \
        stage2.augment=none stage2.include_clean=false stage2.passes=1
corruptions="[gaussian_noise,lens_blur,gaussian_blur,dirty_lens,overexposure,snow,haze,decolorization]"
for name in r20 r4b; do
    /usr/bin/time -f "$name scores: %e s wall" python evaluate.py scores run="$out/$name" \
        tag=detect data.val_fraction=0 scores.max_samples=$n scores.trust=false \
        "scores.ood=[mnist]" "scores.attacks=[fgsm,bim,pgd,cw,iterll]" \
        scores.corruption_detection=true scores.detectors=true \
        "eval.corruptions=$corruptions" "eval.severities=[1,2,3,4,5]" \
        eval.mc_dropout.samples=0 trainer.enable_progress_bar=false
done
