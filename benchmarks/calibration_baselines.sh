#!/usr/bin/env bash
# The measured comparison of docs/results/baselines.md:
# the digits default (plain, and with MC dropout and an ensemble of 5 trained networks), the
# released ResNet-20 for three seeds of stage 2, and the released ResNet-20 + ResNet-56 as a
# heterogeneous ensemble, two more stage-2 recipes on the ResNet-20 and digits_augmix; then
# one comparison table and the OOD / trust scores (with MC dropout) of r20-s0. Sequential.
#   bash benchmarks/calibration_baselines.sh [OUT_DIR]   (default /tmp/ts-runs)
set -euo pipefail
out=${1:-/tmp/ts-runs}
cache=${CACHE_DIR:-$out/cache}
data=${INTROSPECT_SHARED_DATA:-../shared/data}
ckpt=$data/checkpoints/cifar_resnet
common=(stage2.cache_dir="$cache" trainer.enable_progress_bar=false)
export WANDB_MODE=offline
python train.py run.dir="$out/digits" "${common[@]}"
python train.py run.dir="$out/digits-mcd-ens5" eval.mc_dropout.samples=30 stage1.ensemble=5 \
    "${common[@]}"
for s in 0 1 2; do
    python train.py experiment=cifar10_resnet20 run.seed=$s run.dir="$out/r20-s$s" "${common[@]}"
done
python train.py experiment=cifar10_resnet20 run.seed=0 run.dir="$out/r20-r56-ens-s0" \
    "backbone.ensemble_checkpoints=[{checkpoint: $ckpt/resnet20-12fca82f.th}, {name: cifar_resnet56, checkpoint: $ckpt/resnet56-4bfd9763.th}]" \
    "${common[@]}"
for recipe in "noise stage2.augment=gaussian_noise" \
    "reg stage2.head.dropout=0.5 stage2.head.epochs=10 stage2.head.optim.weight_decay=0.05"; do
    set -- $recipe
    name=$1
    shift
    python train.py experiment=cifar10_resnet20 run.seed=0 run.dir="$out/r20-$name-s0" "$@" \
        "${common[@]}"
done
python train.py experiment=digits_augmix run.dir="$out/digits-augmix" "${common[@]}"
python evaluate.py compare "$out/digits" "$out/digits-mcd-ens5" "$out/digits-augmix" \
    "$out/r20-s0" "$out/r20-s1" "$out/r20-s2" "$out/r20-r56-ens-s0" "$out/r20-noise-s0" \
    "$out/r20-reg-s0" --out "$out/comparison"
python evaluate.py scores run="$out/r20-s0" scores.ood.mnist.source=npz \
    scores.ood.mnist.path="$data/mnist-test.npz" scores.ood.mnist.split=all \
    trainer.enable_progress_bar=false
