#!/usr/bin/env bash
# Set up (or reuse) .venv and run the main job: the end-to-end demo on the embedded synthetic default.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS= bash scripts/setup.sh  # the demo needs none of the test tools
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} TOKENIZERS_PARALLELISM=false
.venv/bin/python -m launch.demo "$@"
