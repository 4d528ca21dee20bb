#!/usr/bin/env bash
# Table 1 of the seeds on one GPU, as one prepared script: stage-1 throughput
# (benchmarks/stage1.py: ResNet-18 and ResNet-20 images/s, bf16, channels-last, data on the
# device), then the six table1_<recipe> runs (ResNet-18, CIFAR stem, trained from scratch on
# the 50,000 JPEG training images; stage 2, control, temperature scaling; evaluation on 75
# corruption cells + the 10,000 JPEG test images), one after another, each under
# /usr/bin/time -v, then `evaluate.py compare` (OUT/compare/table1.md). Everything it writes is
# under OUT (default $OUT of the device tool, else /tmp/table1-gpu): runs, logs, timings.
#   INTROSPECT_SHARED_DATA=/path/to/shared/data bash benchmarks/table1_gpu.sh [OUT] [overrides]
#   (RECIPES, SEED from the environment as in table1_cpu.sh; a finished run is skipped.)
# Check it first on CPU with a tiny configuration, e.g.
#   bash benchmarks/table1_gpu.sh /tmp/t1g-check trainer=cpu trainer.precision=32-true \
#     data.train_limit=128 data.num_workers=0 stage1.epochs=1 stage1.simclr.epochs=1 \
#     stage2.head.epochs=1 'eval.corruptions=[gaussian_noise]' 'eval.severities=[5]' \
#     eval.extra.jpeg_q75.source=npz \
#     eval.extra.jpeg_q75.path=../shared/data/cifar10-test-lossless-1017.npz
set -euo pipefail
out=${1:-${OUT:-/tmp/table1-gpu}}
shift || true
recipes=${RECIPES:-standard noise augmix adversarial simclr denoising}
seed=${SEED:-0}
data=${INTROSPECT_SHARED_DATA:-../shared/data}
if [ ! -f "$data/cifar10-jpeg-q75.tar.gz" ]; then
    echo "error: $data/cifar10-jpeg-q75.tar.gz not found; set INTROSPECT_SHARED_DATA" >&2
    exit 2
fi
export INTROSPECT_SHARED_DATA=$data WANDB_MODE=offline
mkdir -p "$out"
{ date; nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || true
  python -c "import torch; print('torch', torch.__version__)"; } > "$out/machine.txt"
if [ "${SKIP_BENCH:-0}" != 1 ]; then
    python benchmarks/stage1.py --nets resnet18,resnet20 --steps 50 --warmup 5 \
        --batch-size 512 --augment-images 0 --cases standard,adversarial,denoising,simclr \
        --pgd-steps 3 2>&1 | tee "$out/stage1_bench.txt"
fi
name_prefix=t1- experiment_prefix=table1_
# shellcheck source=benchmarks/table1_runs.sh
source "$(dirname "$0")/table1_runs.sh"
