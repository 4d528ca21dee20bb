#!/usr/bin/env bash
# The measured detection tables of the README ("Detection of challenging inputs"): the released
# ResNet-20 and the robust ResNet-4b (stage 2 on the AugMix recipe of their experiments, no
# corruption evaluation at training time), then `evaluate.py scores` with the five attacks,
# the seeds' corruptions (CIFAR-10-C and CURE-TSR types) x 5 levels, MNIST and uniform noise as
# OOD, and every detector, on a seeded subset of the 1,017 lossless test images (all of them
# in-distribution: data.val_fraction=0 at scoring time). Sequential.
#   bash benchmarks/detection.sh [OUT_DIR] [MAX_SAMPLES]   (defaults /tmp/detect-runs, 300)
set -euo pipefail
out=${1:-/tmp/detect-runs}
n=${2:-300}
common=(trainer.enable_progress_bar=false "eval.corruptions=[]" "eval.extra={}")
export WANDB_MODE=offline
corruptions="[gaussian_noise,lens_blur,gaussian_blur,dirty_lens,overexposure,snow,haze,decolorization]"
for exp in cifar10_resnet20:r20 cifar10_resnet4b_adv:r4b; do
    name=${exp#*:}
    [ -f "$out/$name/results.json" ] ||
        python train.py experiment=${exp%:*} run.dir="$out/$name" "${common[@]}"
    /usr/bin/time -f "%e s wall" python evaluate.py scores run="$out/$name" tag=detect \
        data.val_fraction=0 scores.max_samples=$n scores.trust=false "scores.ood=[mnist]" \
        "scores.attacks=[fgsm,bim,pgd,cw,iterll]" scores.corruption_detection=true \
        scores.detectors=true "eval.corruptions=$corruptions" "eval.severities=[1,2,3,4,5]" \
        eval.mc_dropout.samples=0 trainer.enable_progress_bar=false
done
