"""Evaluate finished runs: ``python evaluate.py {run=DIR|compare|scores|explain|...}``; see
``python evaluate.py --help`` (the command lives in ``introspect.cli.evaluate``)."""

import sys

from introspect.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
