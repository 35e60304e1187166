"""``python -m fastnas.cost``: the ``fastnas cost`` command."""

import sys

from fastnas.cli.cost import main

sys.exit(main())
