#!/bin/bash
# End to end before/now of issue 12 (docs/results/stage2.md): experiment=cifar10_resnet20
# (evaluation reduced to severity 3) run by the commit before the issue-12 work and by this
# checkout, interleaved before, now, now, before, each in its own run dir and fresh feature cache,
# under /usr/bin/time -v. Usage: bash benchmarks/end_to_end.sh OUT [OLD_COMMIT]
set -euo pipefail
OUT=$(realpath -m "${1:?usage: bash benchmarks/end_to_end.sh OUT [OLD_COMMIT]}")
OLD=${2:-66e149d}
NOW=$(git rev-parse --show-toplevel)
mkdir -p "$OUT"
[ -d "$OUT/old-tree" ] || git -C "$NOW" worktree add -q "$OUT/old-tree" "$OLD"
export INTROSPECT_SHARED_DATA=${INTROSPECT_SHARED_DATA:-$(realpath "$NOW/../shared/data")}
python -c "import sys, torch, torchvision, lightning; print(sys.version.split()[0], torch.__version__, torchvision.__version__, lightning.__version__)"
n=0
for which in before now now before; do
  n=$((n + 1))
  tree=$NOW; [ "$which" = before ] && tree=$OUT/old-tree
  echo "== $n $which start $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  (cd "$tree" && PYTHONPATH=$tree /usr/bin/time -v python train.py experiment=cifar10_resnet20 \
    'eval.severities=[3]' run.dir="$OUT/$which-$n" stage2.cache_dir="$OUT/cache-$which-$n") \
    > "$OUT/$which-$n.log" 2>&1
  echo "== $n $which end $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  grep -E "Elapsed|User time|System time|Maximum resident" "$OUT/$which-$n.log"
done
git -C "$NOW" worktree remove --force "$OUT/old-tree"
