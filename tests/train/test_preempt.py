"""Preemption with the plain launcher: SIGTERM to the `deepspeed` command alone mid-run (it dies without passing the
signal on; the ranks notice their runner is gone) makes every rank finish its step, save a complete checkpoint and
exit 75; the run then resumes with resume=auto and ends with the weights of an uninterrupted run. (A signal that
reaches the ranks themselves, as SLURM's does, is tested in tests/launch/test_slurm.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from pipeline.train.preempt import StopRequest
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


def overrides(train_data, out):
    return common_overrides(train_data, out, max_steps=6, **{"train.save_every": 4})


def wait_group(pgid: int, timeout: float) -> None:
    """Until no process of the group is left (the `deepspeed` runner dies at once, its launcher and ranks later)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(pgid, signal.SIGKILL)
    raise AssertionError(f"process group {pgid} still alive after {timeout}s")


def test_sigterm_to_deepspeed_mid_run_saves_a_checkpoint_and_resume_matches(train_data, tmp_path):
    out = tmp_path / "preempted"
    log = tmp_path / "preempted.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            train_cmd(CONFIG, overrides(train_data, out)),
            cwd=REPO,
            env=launch_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.time() + 300
    while not (out / "metrics.jsonl").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # the runner only, as `kill PID` does
    proc.wait()
    wait_group(proc.pid, 120)
    text = log.read_text()

    stopped = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*"))
    assert len(stopped) == 1 and stopped[0] < 6, (stopped, text[-3000:])
    step = stopped[0]
    assert (out / "checkpoints" / f"step-{step}" / "COMPLETE").is_file()
    assert f"the deepspeed command ended: stopped after step {step} of 6 with a complete checkpoint" in text, text[
        -3000:
    ]
    assert not (out / "final").exists()
    assert [r["step"] for r in metrics(out)] == list(range(1, step + 1))

    resumed = run_train(CONFIG, overrides(train_data, out))
    straight = run_train(CONFIG, overrides(train_data, tmp_path / "straight"))
    assert [r["step"] for r in metrics(resumed)] == list(range(1, 7))
    assert_same_trainables(straight, resumed)


def test_stop_request_records_the_signal_and_gives_the_handler_back():
    before = signal.getsignal(signal.SIGUSR1)
    with StopRequest() as stop:
        assert stop.signal is None
        os.kill(os.getpid(), signal.SIGUSR1)  # the process survives: the handler only records it
        assert stop.signal == signal.SIGUSR1
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal == signal.SIGTERM
    assert signal.getsignal(signal.SIGUSR1) == before
