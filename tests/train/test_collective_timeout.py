"""train.collective_timeout_minutes: a rank that stops answering (SIGSTOP, as a hung node would) ends the job within
the timeout with one line on the rank that waited, instead of hanging it for DeepSpeed's default 30 minutes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

from tests.train.conftest import REPO, common_overrides, launch_env, log_text, train_cmd

CONFIG = REPO / "configs/demo/stage1.yaml"
TIMEOUT_MINUTES = 0.25  # 15 s: longer than the start-up skew of two ranks on a busy machine


def test_a_silent_rank_ends_the_job_within_the_timeout(train_data, tmp_path):
    out = tmp_path / "run"
    log = tmp_path / "run.log"
    overrides = common_overrides(train_data, out, max_steps=50,
                                 **{"train.collective_timeout_minutes": TIMEOUT_MINUTES})
    with open(log, "w") as sink:
        proc = subprocess.Popen(train_cmd(CONFIG, overrides), cwd=REPO, env=launch_env(), stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (out / "metrics.jsonl").is_file() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        rank1 = int(re.search(r"process (\d+) spawned with command: .*'--local_rank=1'", log_text(log)).group(1))
        os.kill(rank1, signal.SIGSTOP)
        stopped = time.time()
        while "error: rank 0:" not in log_text(log) and time.time() < stopped + 120:
            time.sleep(0.1)
        waited = time.time() - stopped
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the stopped rank would only die 30 s later by DeepSpeed's launcher
        proc.wait()
    text = log_text(log)
    line = next((x for x in text.splitlines() if x.startswith("error: rank 0:")), None)
    assert line, text[-3000:]
    assert waited < TIMEOUT_MINUTES * 60 + 30, waited
    assert line.startswith("error: rank 0: another rank did not answer a collective within "
                           "train.collective_timeout_minutes=0.25 (it died or hangs; see its log); backend: ")
    assert "Timed out waiting 15000ms" in line
    assert "[rank0]: Traceback" not in text


GROUP_TIMEOUTS = """
import json, sys
import torch
import torch.distributed.distributed_c10d as c10d
from pipeline.config import load_config
from pipeline.train.config import RunConfig
from pipeline.train.loop import close_distributed, prepare
from pipeline.train.preempt import StopRequest
from tests.adapters.adapter_helpers import leave

with StopRequest() as stop:
    prepare(load_config(RunConfig, sys.argv[1], sys.argv[2:]), None, 0, stop)
    print(json.dumps([g._get_backend(torch.device("cpu")).options._timeout.total_seconds() for g in c10d._world.pg_map]))
close_distributed()
leave()
"""


def test_the_timeout_reaches_the_groups_deepspeed_creates(train_data, tmp_path):
    """ZeRO reduces gradients on a clone of the world group that DeepSpeed creates without a timeout: a rank that went
    silent during a reduction hung its peers for torch's default 30 minutes (where the test above stops rank 1 decides
    which group rank 0 waits on, so that test alone cannot tell)."""
    overrides = common_overrides(train_data, tmp_path / "run", **{"train.collective_timeout_minutes": TIMEOUT_MINUTES})
    proc = subprocess.run([sys.executable, "-c", GROUP_TIMEOUTS, str(CONFIG), *overrides], cwd=REPO,
                          env=launch_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    timeouts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(timeouts) >= 2  # the default group and DeepSpeed's data-parallel group
    assert timeouts == [TIMEOUT_MINUTES * 60] * len(timeouts)
