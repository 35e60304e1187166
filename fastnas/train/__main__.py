"""``python -m fastnas.train``: the ``fastnas train`` command."""

import sys

from fastnas.cli.train import main

sys.exit(main())
