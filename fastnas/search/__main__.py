"""``python -m fastnas.search``: the ``fastnas search`` command."""

import sys

from fastnas.cli.search import main

sys.exit(main())
