#!/usr/bin/env bash
# Table 1 of the seeds on CPU: the six table1_cpu_<recipe> runs (CIFAR ResNet-20 trained from
# scratch on the 50,000 JPEG training images with each stage-1 recipe, then stage 2, the
# control, temperature scaling and the evaluation on 75 corruption cells + the JPEG test set),
# one after another, each under /usr/bin/time -v (OUT/<run>.time: wall time, peak memory), then
# `evaluate.py compare` over them (OUT/compare/table1.md: the Table-1 layout).
# Estimated ~2.2 h on 2 idle cores (see configs/experiment/table1_cpu_standard.yaml).
#   bash benchmarks/table1_cpu.sh [OUT_DIR] [key=value overrides for every run ...]
#   (default OUT_DIR /tmp/table1-cpu; RECIPES="standard noise ..." and SEED=0 from the
#   environment). A finished run is skipped; an interrupted one continues (run.resume=true).
# Smoke run (a few batches of everything, ~minutes):
#   bash benchmarks/table1_cpu.sh /tmp/t1-smoke data.train_limit=256 stage1.epochs=1 \
#     stage1.simclr.epochs=1 stage2.head.epochs=1 'eval.corruptions=[gaussian_noise]' \
#     'eval.severities=[5]' eval.extra.jpeg_q75.source=npz \
#     eval.extra.jpeg_q75.path=../shared/data/cifar10-test-lossless-1017.npz
set -euo pipefail
out=${1:-/tmp/table1-cpu}
shift || true
recipes=${RECIPES:-standard noise augmix adversarial simclr denoising}
seed=${SEED:-0}
export WANDB_MODE=offline
mkdir -p "$out"
name_prefix=t1cpu- experiment_prefix=table1_cpu_
# shellcheck source=benchmarks/table1_runs.sh
source "$(dirname "$0")/table1_runs.sh"
