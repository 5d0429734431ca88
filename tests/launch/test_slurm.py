"""launch/slurm/*.sbatch on a real two-node SLURM cluster (two slurmd on this machine), 2 nodes x 1 CPU rank.

The train job runs `launch/train.py` (stage 1 of the demo config on synthetic shards) and must end with the same
trainable weights as the same run launched directly with `deepspeed --num_gpus 2`; the eval job runs `launch/eval.py`
(POPE on a tiny checkpoint) and must write the predictions and metrics of a single-process run. A third job is sent
the time-limit warning mid-training: it must checkpoint, requeue itself, resume and end like the direct run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.launch.slurm_cluster import require_slurm, slurm_cluster
from tests.train.conftest import common_overrides, launch_env, log_text

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TRAIN_CONFIG = ROOT / "configs/demo/stage1.yaml"
JOB_TIMEOUT = 300  # a job, or a preempted job and its requeued run, on a busy 2-core machine
# Optimizer steps of every training launch: enough that the warning sent once training runs (a round trip through
# slurmctld and both slurmd) reaches the ranks before their last step on a fast machine too.
STEPS = 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_eval(out_dir: Path) -> dict:
    return {"metrics": json.loads((out_dir / "metrics.json").read_text()),
            "predictions": (out_dir / "predictions.jsonl").read_text()}


def read_run(out_dir: Path) -> dict:
    """A training run's per-step losses and final trainable weights."""
    losses = [json.loads(line)["loss"] for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {"losses": losses, "trainables": load_file(out_dir / "final/trainables.safetensors")}


def run_env(base: dict[str, str]) -> dict[str, str]:
    """What the scripts and the entry need on this CPU machine; sbatch exports it into the job."""
    extra = {"VENV": sys.prefix, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port())}
    return {**base, **extra}


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, str]]:
    require_slurm()
    with slurm_cluster() as env:
        yield env


@dataclass
class Launch:
    """One launch running in the background: its command, where rank 0 writes, its logs (job log last)."""

    cmd: list[str]
    out_dir: Path
    logs: list[Path]
    proc: subprocess.Popen

    def result(self, read) -> dict:
        """Wait for the launch; fail with the log tail unless it exited 0; return what `read` reads of its output."""
        try:
            rc = self.proc.wait(timeout=JOB_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        assert rc == 0, f"{' '.join(self.cmd)} -> {rc}\n" + "\n".join(
            f"--- {log.name}\n{log_text(log)[-4000:]}" for log in self.logs if log.exists())
        return read(self.out_dir)

    def stop(self) -> None:
        """Kill the launch's own process group (a direct launch's ranks too; jobs are cancelled with the cluster)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def start(cmd: list[str], env: dict[str, str], out_dir: Path, output: Path, *more_logs: Path) -> Launch:
    with open(output, "w") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return Launch(cmd, out_dir, [output, *more_logs], proc)


def sbatch(cluster: dict[str, str], script: str, tmp: Path, name: str, *args: str, **env_extra: str) -> Launch:
    """Submit a script from the repo root on 2 nodes x 1 CPU rank; `sbatch --wait` exits with the job's code. The
    time limit stays above train.sbatch's `--signal=B:USR1@300`, which would otherwise stop the run at once."""
    env = {**run_env(cluster), "GPUS_PER_NODE": "1", **env_extra}
    log = tmp / f"{name}.log"
    cmd = ["sbatch", "--wait", "--nodes=2", "--gpus-per-node=0", "--cpus-per-task=1", "--partition=test",
           "--time=30", f"--output={log}", script, *args]
    return start(cmd, env, tmp / name, tmp / f"{name}.sbatch.out", log)


@pytest.fixture(scope="module")
def launches(cluster, train_data, bench_data, checkpoint, tmp_path_factory) -> dict[str, Launch]:
    """Both jobs (1 CPU per node each, so they run side by side) and the direct launches, all started at once."""
    tmp = tmp_path_factory.mktemp("slurm-runs")
    train_direct = [f"{sys.prefix}/bin/deepspeed", "--num_gpus", "2", "--master_port", str(free_port()),
                    "launch/train.py", "--config", str(TRAIN_CONFIG), *common_overrides(train_data, tmp / "direct",
                                                                                        max_steps=STEPS)]
    pope = ["--model", str(checkpoint), "--bench", "pope", *bench_data["pope"], "--max-new-tokens", "3"]
    eval_direct = [sys.executable, "launch/eval.py", *pope, "--out", str(tmp / "eval-direct")]
    env = run_env(launch_env())
    running = {
        "train": sbatch(cluster, "launch/slurm/train.sbatch", tmp, "train",
                        *common_overrides(train_data, tmp / "train", max_steps=STEPS), CONFIG=str(TRAIN_CONFIG)),
        "eval": sbatch(cluster, "launch/slurm/eval.sbatch", tmp, "eval", *pope, "--out", str(tmp / "eval")),
        "direct": start(train_direct, env, tmp / "direct", tmp / "direct.log"),
        "eval-direct": start(eval_direct, env, tmp / "eval-direct", tmp / "eval-direct.log"),
    }
    yield running
    for launch in running.values():
        launch.stop()


def test_train_sbatch_two_nodes_matches_direct_launch(launches):
    slurm = launches["train"].result(read_run)
    direct = launches["direct"].result(read_run)
    assert len(slurm["losses"]) == STEPS
    # Rank r reads the same shards on node r as rank r of the direct launch; a two-rank gloo sum is order-free,
    # so the runs agree bit for bit.
    assert slurm["losses"] == direct["losses"]
    assert slurm["trainables"].keys() == direct["trainables"].keys()
    for name, tensor in slurm["trainables"].items():
        assert torch.equal(tensor, direct["trainables"][name]), name
    log = log_text(launches["train"].logs[-1])
    assert "master nodeA (127.0.0.1:" in log


def test_eval_sbatch_two_nodes_matches_one_process(launches):
    slurm = launches["eval"].result(read_eval)
    direct = launches["eval-direct"].result(read_eval)
    assert slurm == direct
    assert "2 nodes x 1 ranks" in log_text(launches["eval"].logs[-1])


def job_id(launch: Launch) -> str:
    """The id `sbatch --wait` printed on submission."""
    deadline = time.time() + 60
    while time.time() < deadline:
        found = re.search(r"Submitted batch job (\d+)", log_text(launch.logs[0]))
        if found:
            return found.group(1)
        time.sleep(0.1)
    raise AssertionError(f"no job id in {launch.logs[0]}: {log_text(launch.logs[0])}")


def test_train_sbatch_preempted_checkpoints_requeues_and_resumes(cluster, launches, train_data, tmp_path):
    """What `#SBATCH --signal=B:USR1@300` does before the time limit, sent by hand once training runs: the ranks stop
    after their step with a checkpoint, the job requeues itself, and the second run resumes (resume=auto) and ends
    with the weights of the uninterrupted direct launch."""
    direct = launches["direct"].result(read_run)
    out = tmp_path / "preempted"
    job = sbatch(cluster, "launch/slurm/train.sbatch", tmp_path, "preempted",
                 *common_overrides(train_data, out, max_steps=STEPS), CONFIG=str(TRAIN_CONFIG))
    jid, log = job_id(job), job.logs[-1]
    deadline = time.time() + JOB_TIMEOUT
    while "train:" not in log_text(log) and time.time() < deadline:  # handlers are in
        assert job.proc.poll() is None, log_text(log)[-3000:]
        time.sleep(0.05)
    subprocess.run(["scancel", "--batch", "--signal=USR1", jid], env=cluster, check=True, timeout=30)
    resumed = job.result(read_run)

    text = log_text(log)
    stopped = re.search(rf"preempted: SIGUSR1: stopped after step (\d+) of {STEPS} with a complete checkpoint", text)
    assert stopped, text[-4000:]
    step = int(stopped.group(1))
    assert f"requeueing job {jid} (restart 1)" in text
    assert f"resumed from {out / 'checkpoints' / f'step-{step}'} at step {step}" in text
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))
    assert resumed["trainables"].keys() == direct["trainables"].keys()
    for name, tensor in resumed["trainables"].items():
        torch.testing.assert_close(tensor, direct["trainables"][name], rtol=0, atol=1e-6)
