"""``python -m fastnas.study``: the ``fastnas study`` command (:mod:`fastnas.cli.study`), kept as a module
so the command line of earlier releases keeps working."""

import sys

from fastnas.cli.study import main

if __name__ == "__main__":
    sys.exit(main())
