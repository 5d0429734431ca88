"""Several `launch/eval.py` runs in one distributed launch (one process group, set up here) to save start-up time.

    torchrun --nproc_per_node 2 tests/eval/multirank_entry.py RUNS.json     (a json list of argv lists)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.eval.runner import main  # noqa: E402

if __name__ == "__main__":
    dist.init_process_group("gloo")
    codes = [main(argv) for argv in json.loads(Path(sys.argv[1]).read_text())]
    dist.destroy_process_group()
    sys.exit(max(codes))
