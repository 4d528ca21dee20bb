"""Regenerate the measured result tables (docs/results/) from fresh runs, with their provenance.

    python benchmarks/readme_tables.py [--out DIR] [--only digits,cifar10_resnet20,...]

Each table is a list of runs (``python -m introspect train`` with the overrides below, one run
directory each under ``--out``; finished runs are reused) followed by ``evaluate.py compare``,
whose ``comparison.md`` is the table as docs/results shows it (accuracy / ECE in %, mean ± sample
std over seeds). ``--out/provenance.json`` records the package versions, the git commit and
the machine the numbers came from (``introspect.runs.provenance``); docs/results states them
next to each table. The digits rows are what ``python train.py`` prints with the pinned
versions; the CIFAR tables need ``../shared/data`` (or ``$INTROSPECT_SHARED_DATA``).

Tables (wall time on 2 busy CPU cores, roughly): ``digits`` (the default and digits_augmix;
~5 min), ``cifar10_resnet20`` (three seeds of the released ResNet-20 recipe; ~1 h),
``cifar10_resnet4b_adv`` (three seeds, two head recipes; ~1.5 h). The other measured
tables come from their sections' scripts, run from here by name into ``--out/<name>`` (see
``SCRIPTS``): ``baselines``, ``temperature``, ``explanations``, ``scores``/``detection``,
``active``, ``quality``, ``scale``, ``head_training``, ``augment``, ``corruptions``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from introspect.runs.provenance import device_description, git_state, package_versions  # noqa: E402

REGULARIZED = [
    "stage2.head.dropout=0.5",
    "stage2.head.epochs=10",
    "stage2.head.optim.weight_decay=0.05",
]
TABLES: dict[str, list[tuple[str, list[str]]]] = {
    "digits": [
        ("digits", []),
        ("digits-augmix", ["experiment=digits_augmix"]),
    ],
    "cifar10_resnet20": [
        (f"r20-s{s}", ["experiment=cifar10_resnet20", f"run.seed={s}"]) for s in (0, 1, 2)
    ],
    "cifar10_resnet4b_adv": [
        *((f"r4b-s{s}", ["experiment=cifar10_resnet4b_adv", f"run.seed={s}"]) for s in (0, 1, 2)),
        *(
            (f"r4b-reg-s{s}", ["experiment=cifar10_resnet4b_adv", f"run.seed={s}", *REGULARIZED])
            for s in (0, 1, 2)
        ),
    ],
}


# Results table -> the script that measures it (``{out}``: its output folder).
SCRIPTS: dict[str, list[str]] = {
    "baselines": ["bash", "benchmarks/calibration_baselines.sh", "{out}"],
    "temperature": [sys.executable, "-m", "benchmarks.temperature"],
    "explanations": [sys.executable, "-m", "benchmarks.explanations"],
    "detection": ["bash", "benchmarks/detection.sh", "{out}"],
    "active": ["bash", "benchmarks/active_learning.sh", "{out}"],
    "quality": [sys.executable, "-m", "benchmarks.iqa_proxy", "{out}"],
    "scale": [sys.executable, "-m", "benchmarks.scale", "--images", "20000", "--image-size", "32"],
    "head_training": [sys.executable, "-m", "benchmarks.head_training", "--threads", "1"],
    "augment": [sys.executable, "-m", "benchmarks.augment"],
    "corruptions": [sys.executable, "-m", "benchmarks.corruptions"],
}


def _script(name: str, out: Path) -> None:
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    command = [part.replace("{out}", str(folder)) for part in SCRIPTS[name]]
    print("+", " ".join(command), flush=True)
    with (folder / "output.txt").open("w") as log:
        subprocess.run(command, cwd=REPO, check=True, stdout=log, stderr=subprocess.STDOUT)
    print((folder / "output.txt").read_text()[-4000:])


def _run(args: list[str]) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=REPO, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/readme-tables"))
    parser.add_argument(
        "--only", default=",".join([*TABLES, *SCRIPTS]), help="comma-separated table names"
    )
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(TABLES) - set(SCRIPTS))
    if unknown:
        parser.error(f"unknown table(s) {unknown}; choose from {', '.join([*TABLES, *SCRIPTS])}")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_MODE", "offline")
    record = {
        "versions": package_versions(),
        "git": git_state(REPO),
        "machine": {**device_description(), "cpu_count": os.cpu_count()},
        "tables": {},
    }
    for name in names:
        started = time.perf_counter()
        if name in SCRIPTS:
            _script(name, out)
            seconds = round(time.perf_counter() - started, 1)
            record["tables"][name] = {"output": str(out / name / "output.txt"), "seconds": seconds}
            continue
        dirs = []
        for run_name, overrides in TABLES[name]:
            run_dir = out / run_name
            if not (run_dir / "results.json").is_file():
                common = [f"stage2.cache_dir={out / 'cache'}", "logger.wandb=false"]
                _run(["-m", "introspect", "train", *overrides, f"run.dir={run_dir}", *common])
            dirs.append(str(run_dir))
        table_dir = out / f"table-{name}"
        _run(["-m", "introspect", "compare", *dirs, "--out", str(table_dir), "--no-wandb"])
        seconds = time.perf_counter() - started
        record["tables"][name] = {"runs": dirs, "comparison": str(table_dir / "comparison.md"),
                                  "seconds": round(seconds, 1)}  # fmt: skip
        print((table_dir / "comparison.md").read_text())
    (out / "provenance.json").write_text(json.dumps(record, indent=2))
    print(json.dumps({k: record[k] for k in ("versions", "git")}, indent=2))
    print(f"tables and provenance in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
