# Sourced by table1_cpu.sh and table1_gpu.sh: runs experiment=${experiment_prefix}<recipe> for
# every recipe of $recipes into $out/${name_prefix}<recipe>-s$seed, each under /usr/bin/time -v
# ($out/<run>.time) with its output also in $out/<run>.log, skipping finished runs and resuming
# interrupted ones; then `evaluate.py compare` over them ($out/compare/table1.md) and the wall
# times and peak memory. "$@" are key=value overrides for every run.
runs=()
for r in $recipes; do
    name=$name_prefix$r-s$seed
    runs+=("$out/$name")
    if [ -f "$out/$name/results.json" ]; then
        echo "== $name: finished, skipped"
        continue
    fi
    resume=()
    [ -d "$out/$name" ] && resume=(run.resume=true)
    echo "== $name: $(date +%T)"
    /usr/bin/time -v -o "$out/$name.time" python train.py experiment=$experiment_prefix$r \
        run.seed="$seed" run.dir="$out/$name" "${resume[@]}" "$@" 2>&1 | tee "$out/$name.log"
done
python evaluate.py compare "${runs[@]}" --out "$out/compare"
grep -H -E "Elapsed|Maximum resident" "$out"/*.time
