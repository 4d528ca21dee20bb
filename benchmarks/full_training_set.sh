#!/usr/bin/env bash
# The full-training-set tables (docs/results): stage 2 and the control of the released CIFAR
# ResNet-20 and ResNet-56 trained on all 50,000 JPEG (q75) CIFAR-10 training images, with the
# AugMix x2 + clean recipe (the experiments' default) and on the plain images
# (stage2.augment=none), three seeds each, and the matched 5,170-image runs of ResNet-20
# (experiment=cifar10_resnet20, both recipes); each run's wall time and peak memory from
# /usr/bin/time -v (OUT/<run>.time); then `evaluate.py compare` per network and recipe and the
# docs/results rows (benchmarks/compare_rows.py).
# Sequential, niced; the clean features of a network are extracted once (feature cache) and
# shared by all its runs.
#   bash benchmarks/full_training_set.sh [OUT_DIR] [NETS] [SEEDS]
#   (defaults: /tmp/full-runs, "resnet20 resnet56", "0 1 2")
set -euo pipefail
out=${1:-/tmp/full-runs}
nets=${2:-resnet20 resnet56}
seeds=${3:-0 1 2}
common=(trainer.enable_progress_bar=false)
export WANDB_MODE=offline
mkdir -p "$out"
for net in $nets; do
    for s in $seeds; do
        for recipe in augmix plain; do
            name=full-${net}-${recipe}-s$s
            extra=()
            [ "$recipe" = plain ] && extra=(stage2.augment=none)
            nice -n 10 /usr/bin/time -v -o "$out/$name.time" python train.py \
                experiment=cifar10_full_$net run.seed=$s run.dir="$out/$name" "${extra[@]}" \
                "${common[@]}"
        done
    done
done
# The matched 5,170-image runs of the released ResNet-20 (same recipes, 40 head epochs).
for s in $seeds; do
    for recipe in augmix plain; do
        name=r20-5k-${recipe}-s$s
        extra=()
        [ "$recipe" = plain ] && extra=(stage2.augment=none)
        nice -n 10 /usr/bin/time -v -o "$out/$name.time" python train.py \
            experiment=cifar10_resnet20 run.seed=$s run.dir="$out/$name" "${extra[@]}" \
            "${common[@]}"
    done
done
for group in $(for net in $nets; do echo full-$net-augmix full-$net-plain; done) r20-5k-augmix r20-5k-plain; do
    runs=()
    for s in $seeds; do runs+=("$out/${group}-s$s"); done
    python evaluate.py compare "${runs[@]}" --out "$out/compare-${group}"
    echo "## $group"
    python benchmarks/compare_rows.py "$out/compare-${group}/comparison.csv"
done
grep -H -E "Elapsed|Maximum resident" "$out"/*.time
