"""Evaluate a shipped checkpoint on a benchmark, or score a predictions file (`--help`; pipeline/eval/runner.py)."""

import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pipeline.eval.runner import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
