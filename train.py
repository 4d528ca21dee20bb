"""Run introspect: ``python train.py [experiment=NAME] [group=option] [a.b=value ...]``."""

from __future__ import annotations

import sys

from introspect.config import ConfigError, load_config
from introspect.runs.rundir import check_run_dir


def main(argv: list[str]) -> int:
    """Compose the config from ``argv``, run the job, print where its results are."""
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        cfg = load_config(argv)
        check_run_dir(cfg)  # before the heavy imports below
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    from introspect.runs.distributed import is_global_zero, report_stopped_process
    from introspect.runs.pipeline import USER_ERRORS, quiet_library_warnings, run

    quiet_library_warnings()

    try:
        results = run(cfg)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if not report_stopped_process(err):  # another process of a multi-process run stopped
            raise
        return 1
    if is_global_zero():
        print(f"run directory: {cfg.run.dir} ({results['run']['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
