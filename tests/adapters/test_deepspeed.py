"""IMoD under real DeepSpeed: 2 CPU ranks (gloo), ZeRO-2 and ZeRO-3 with partitioned A, gradient accumulation 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ds_imod_check.py")


@pytest.mark.slow
def test_zero2_and_zero3_match_the_single_process_update(tmp_path):
    out = tmp_path / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           str(SCRIPT), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for stage in ("zero2", "zero3"):
        assert report[stage]["injection_effect"] > 1e-2  # the constraints really changed the update
        assert report[stage]["max_abs_diff"] < 1e-5, report
