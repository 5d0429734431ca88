"""Run by test_train_and_ship.py on 2 ranks: `pipeline.train.loop.train` (what `launch/train.py` calls) once per
entry of a plan, all in this one process group, so that many short stage-2 runs pay for one launch.

Usage: PLAN_JSON OUT_JSON. The plan is a list of {"config": YAML, "overrides": [key=value, ...]}; rank 0 writes
{output_dir: seconds the run took}."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).parents[2])]

from pipeline.config import load_config  # noqa: E402
from pipeline.train.config import RunConfig  # noqa: E402
from pipeline.train.loop import close_distributed, train  # noqa: E402
from tests.adapters.adapter_helpers import leave  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    seconds = {}
    for run in json.loads(Path(sys.argv[1]).read_text()):
        start = time.perf_counter()
        run_dir = train(load_config(RunConfig, run["config"], run["overrides"]))  # the 2nd call reuses the group
        seconds[str(run_dir)] = time.perf_counter() - start
    if torch.distributed.get_rank() == 0:
        Path(sys.argv[2]).write_text(json.dumps(seconds))
    close_distributed()


if __name__ == "__main__":
    main()
    leave()
