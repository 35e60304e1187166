"""``python -m fastnas.evaluate``: the ``fastnas evaluate`` command (:mod:`fastnas.cli.evaluate`), kept as a module
so the command line of earlier releases keeps working."""

import sys

from fastnas.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
