#!/usr/bin/env bash
# Set up (or reuse) .venv and check the tree: ruff (lint + format), mypy, and the import layers of ARCHITECTURE.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python scripts/check_layers.py
