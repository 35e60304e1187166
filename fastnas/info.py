"""``python -m fastnas.info``: the ``fastnas info`` command (:mod:`fastnas.cli.info`), kept as a module
so the command line of earlier releases keeps working."""

import sys

from fastnas.cli.info import main

if __name__ == "__main__":
    sys.exit(main())
