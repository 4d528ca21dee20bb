#!/usr/bin/env bash
# The active-learning tables (docs/results): the active_digits experiment for three seeds (one
# thread per run; each run prints its wall time), then the seeds pooled into mean ± std with
# `evaluate.py compare` (active_comparison.md in OUT_DIR/comparison). Sequential.
#   bash benchmarks/active_learning.sh [OUT_DIR] [EXPERIMENT] [OVERRIDE ...]
#   (default /tmp/active-runs active_digits; e.g. OUT active_cifar10_cpu on 2 CPU cores, or
#   OUT active_cifar10 trainer=gpu)
set -euo pipefail
out=${1:-/tmp/active-runs}
experiment=${2:-active_digits}
shift $(($# < 2 ? $# : 2))
export WANDB_MODE=offline OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for s in 0 1 2; do
    /usr/bin/time -f "seed $s: %e s wall, %U s user, %S s system" \
        python train.py experiment="$experiment" run.seed=$s run.dir="$out/$experiment-s$s" \
        run.overwrite=true "$@"
done
python evaluate.py compare "$out/$experiment"-s0 "$out/$experiment"-s1 "$out/$experiment"-s2 \
    --out "$out/comparison"
