"""``python -m fastnas.pipeline``: the ``fastnas pipeline`` command (:mod:`fastnas.cli.pipeline`), kept as a module
so the command line of earlier releases keeps working."""

import sys

from fastnas.cli.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
