"""Run introspect: ``python train.py [experiment=NAME] [group=option] [a.b=value ...]``; see
``python train.py --help`` (the command lives in ``introspect.cli.train``)."""

import sys

from introspect.cli.train import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
