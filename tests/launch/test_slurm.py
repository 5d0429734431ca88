"""launch/slurm/*.sbatch on a real two-node SLURM cluster (two slurmd on this machine), 2 nodes x 1 CPU rank.

The entry is a stand-in with train.py's command line; switching to the real trainer is the ENTRY/CONFIG lines below
plus what `read_result` reads.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.launch.slurm_cluster import require_slurm, slurm_cluster

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ENTRY = "tests/launch/allreduce_entry.py"
CONFIG = {"world_size": 2, "steps": 3, "lr": 0.1, "seed": 0}
JOB_TIMEOUT = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_result(out_dir: Path) -> dict:
    return json.loads((out_dir / "result.json").read_text())


def run_env(base: dict[str, str]) -> dict[str, str]:
    """What the scripts and the entry need on this CPU machine; sbatch exports it into the job."""
    extra = {"VENV": sys.prefix, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port())}
    return {**base, **extra}


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, str]]:
    require_slurm()
    with slurm_cluster() as env:
        yield env


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("slurm-config") / "config.json"
    path.write_text(json.dumps(CONFIG))
    return path


@dataclass
class Launch:
    """One launch running in the background: its command, where rank 0 writes, its logs (job log last)."""

    cmd: list[str]
    out_dir: Path
    logs: list[Path]
    proc: subprocess.Popen

    def result(self) -> dict:
        """Wait for the launch; fail with the log tail unless it exited 0; return rank 0's result."""
        try:
            rc = self.proc.wait(timeout=JOB_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        assert rc == 0, f"{' '.join(self.cmd)} -> {rc}\n" + "\n".join(
            f"--- {log.name}\n{log.read_text()[-4000:]}" for log in self.logs if log.exists())
        return read_result(self.out_dir)

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


def sbatch(cluster: dict[str, str], script: str, config: Path, tmp: Path, name: str, *overrides: str) -> Launch:
    """Submit a script from the repo root on 2 nodes x 1 CPU rank; `sbatch --wait` exits with the job's code."""
    env = {**run_env(cluster), "ENTRY": ENTRY, "CONFIG": str(config), "GPUS_PER_NODE": "1"}
    log = tmp / f"{name}.log"
    cmd = ["sbatch", "--wait", "--nodes=2", "--gpus-per-node=0", "--cpus-per-task=1", "--partition=test",
           "--time=5", f"--output={log}", script, *overrides, f"out_dir={tmp / name}"]
    return start(cmd, env, tmp / name, tmp / f"{name}.sbatch.out", log)


@pytest.fixture(scope="module")
def launches(cluster, config_file, tmp_path_factory) -> dict[str, Launch]:
    """Both jobs (1 CPU per node each, so they run side by side) and the direct launch, all started at once."""
    tmp = tmp_path_factory.mktemp("slurm-runs")
    direct_cmd = [f"{sys.prefix}/bin/deepspeed", "--num_gpus", "2", "--master_port", str(free_port()),
                  "--no_local_rank", ENTRY, "--config", str(config_file), f"out_dir={tmp / 'direct'}"]
    running = {
        "train": sbatch(cluster, "launch/slurm/train.sbatch", config_file, tmp, "train"),
        "eval": sbatch(cluster, "launch/slurm/eval.sbatch", config_file, tmp, "eval", "steps=0"),
        "direct": start(direct_cmd, run_env(dict(os.environ)), tmp / "direct", tmp / "direct.log"),
    }
    yield running
    for launch in running.values():
        launch.stop()


def test_train_sbatch_two_nodes_matches_direct_launch(launches):
    slurm = launches["train"].result()
    assert slurm["world_size"] == 2 and slurm["allreduce"] == 3.0
    assert [p["node"] for p in slurm["placement"]] == ["0", "1"], "rank r must run on node r"
    assert slurm["losses"][-1] < slurm["losses"][0]
    direct = launches["direct"].result()
    # Same data shards per rank; a two-rank gloo sum is order-free, so the runs agree bit for bit.
    for key in ("allreduce", "losses", "weight", "bias"):
        assert slurm[key] == direct[key], key


def test_eval_sbatch_two_nodes(launches):
    result = launches["eval"].result()
    assert result["world_size"] == 2 and result["allreduce"] == 3.0
    assert [p["node"] for p in result["placement"]] == ["0", "1"]
    # The master is nodeA reached at its NodeAddr (the test nodes' names don't resolve).
    assert "master nodeA (127.0.0.1:" in launches["eval"].logs[-1].read_text()
