"""``python -m fastnas <command>``: the ``fastnas`` command."""

import sys

from fastnas.cli.main import main

sys.exit(main())
