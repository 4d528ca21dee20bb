"""Re-evaluate a finished run: ``python evaluate.py run=runs/<name> [a.b=value ...]``.

Reloads the run's backbone and stage-2 heads, evaluates them on the configured splits
(override e.g. ``eval.corruptions=[fog,snow] eval.severities=[5]``) and rewrites
``results.json`` and ``table.md`` in the run directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

from introspect.config import ConfigError, load_run_config


def main(argv: list[str]) -> int:
    """Parse ``run=DIR`` and overrides, re-evaluate, print the table."""
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0 if argv else 2
    runs = [a.partition("=")[2] for a in argv if a.startswith("run=")]
    if len(runs) != 1:
        print("error: give exactly one run=runs/<name>", file=sys.stderr)
        return 2
    run_dir = Path(runs[0]).expanduser().resolve()
    try:
        cfg = load_run_config(run_dir, [a for a in argv if not a.startswith("run=")])
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    from introspect.runs.pipeline import USER_ERRORS, quiet_library_warnings, reevaluate

    quiet_library_warnings()

    try:
        reevaluate(cfg, run_dir)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"rewrote {run_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
