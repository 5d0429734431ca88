"""A run killed with SIGKILL mid-training and resumed with resume=auto ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.train.conftest import (
    REPO,
    assert_same_trainables,
    common_overrides,
    launch_env,
    metrics,
    run_train,
    train_cmd,
)

CONFIG = REPO / "configs/demo/stage1.yaml"


# group: windows of 3 micro-batches planned from the lengths the ranks cache before the first epoch
BATCHING = {"pad": {}, "pack": {"data.batching": "pack", "data.max_tokens": 4096},
            "group": {"data.batching": "group", "data.group_batches": 3}}


def overrides(train_data, out, batching: str = "pad"):
    # 4 optimizer steps per epoch on 2 ranks: 10 steps cross two epoch boundaries; accumulation 2 on top.
    return common_overrides(train_data, out, max_steps=10, **{"train.epochs": 3, "train.save_every": 2,
                                                              "train.keep_last": 2, "data.micro_batch_size": 2,
                                                              "optim.gradient_accumulation_steps": 2,
                                                              "data.num_workers": 2, **BATCHING[batching]})


@pytest.mark.parametrize("batching", BATCHING)
def test_sigkill_then_resume_auto_equals_uninterrupted(train_data, tmp_path, batching):
    straight = run_train(CONFIG, overrides(train_data, tmp_path / "straight", batching))

    out = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(CONFIG, overrides(train_data, out, batching)), cwd=REPO, env=launch_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    marker = out / "checkpoints" / "step-4" / "COMPLETE"
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the run never reached its step-4 checkpoint"
    assert not (out / "final").exists(), "the run finished before it could be killed"
    # a checkpoint half-written by a crash (no COMPLETE marker) must be ignored
    (out / "checkpoints" / "step-9").mkdir()

    resumed = run_train(CONFIG, overrides(train_data, out, batching))
    assert [r["step"] for r in metrics(resumed)] == list(range(1, 11))
    assert_same_trainables(straight, resumed)
    for x, y in zip(metrics(straight), metrics(resumed)):
        assert abs(x["loss"] - y["loss"]) < 1e-5, (x, y)
    kept = sorted(p.name for p in (out / "checkpoints").glob("step-*") if (p / "COMPLETE").exists())
    assert kept == ["step-10", "step-8"]
    state = json.loads((out / "checkpoints" / "step-10" / "rank-1.json").read_text())
    assert state["step"] == 10 and "data" in state
