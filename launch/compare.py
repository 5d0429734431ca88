"""Compare adapters on one recipe: train, merge and evaluate each (adapter, seed) cell, then tabulate
(`--help`; pipeline/compare/runner.py)."""

import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pipeline.compare.runner import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
