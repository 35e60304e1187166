import os
import sys

# pytest benchmarks/: `cases` and `harness` import as the scripts do (harness puts this checkout first).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402,F401
