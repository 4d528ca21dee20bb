"""The image-quality table (docs/results): ``python train.py experiment=iqa_proxy`` for three seeds
(the first one builds the proxy set into a fresh cache, so its wall time includes that), then
the Table-13 layout pooled over the seeds (mean ± std; the full-reference baselines are
deterministic) with the wall and CPU time of every run.

    OMP_NUM_THREADS=1 python benchmarks/iqa_proxy.py [OUT_DIR] [extra overrides ...]

(default OUT_DIR /tmp/iqa-proxy; one intra-op thread is faster than two on a loaded machine)
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from introspect.jobs.quality import quality_table  # noqa: E402


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path("/tmp/iqa-proxy")
    extra = argv[1:]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    runs, timing = [], []
    for seed in (0, 1, 2):
        run_dir = out / f"s{seed}"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "train.py",
                "experiment=iqa_proxy",
                f"run.seed={seed}",
                f"run.dir={run_dir}",
                f"quality.cache_dir={out / 'cache'}",
                *extra,
            ],
            cwd=REPO,
            check=True,
        )
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        results = json.loads((run_dir / "results.json").read_text())
        runs.append(results)
        timing.append(
            {"seed": seed, "wall_s": wall, "cpu_s": cpu, "stages_s": results["run"]["timings"]}
        )
    pooled = {
        "data": runs[0]["data"],
        "baselines": runs[0]["baselines"],
        "models": {
            head: {m: [r["models"][head][m] for r in runs] for m in runs[0]["models"][head]}
            for head in runs[0]["models"]
        },
    }
    lines = [
        quality_table(pooled),
        "",
        "| seed | wall (s) | CPU (s) | stages (s) |",
        "|---|---|---|---|",
    ]
    for t in timing:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in t["stages_s"].items())
        lines.append(f"| {t['seed']} | {t['wall_s']:.1f} | {t['cpu_s']:.1f} | {stages} |")
    load = os.getloadavg()
    lines += [
        "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{load[0]:.1f} at the end; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
    ]
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    (out / "timing.json").write_text(json.dumps(timing, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
