"""launch/slurm/*.sbatch on a real two-node SLURM cluster (two slurmd on this machine), 2 nodes x 1 CPU rank.

The entry is a stand-in with train.py's command line; switching to the real trainer is the ENTRY/CONFIG lines below
plus what `read_result` reads.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
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
    return {**base, "VENV": sys.prefix, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port())}


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


def sbatch(cluster: dict[str, str], script: str, config: Path, log: Path, *overrides: str) -> None:
    """Submit a script from the repo root on 2 nodes x 1 CPU rank and wait; fail with the job log on error."""
    env = {**run_env(cluster), "ENTRY": ENTRY, "CONFIG": str(config), "GPUS_PER_NODE": "1"}
    cmd = ["sbatch", "--wait", "--nodes=2", "--gpus-per-node=0", "--cpus-per-task=1", "--partition=test",
           "--time=5", f"--output={log}", script, *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT)
    job_log = log.read_text() if log.exists() else "(no job log)"
    assert proc.returncode == 0, f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stderr}\n{job_log[-4000:]}"


def test_train_sbatch_two_nodes_matches_direct_launch(cluster, config_file, tmp_path):
    sbatch(cluster, "launch/slurm/train.sbatch", config_file, tmp_path / "train.log", f"out_dir={tmp_path / 'slurm'}")
    slurm = read_result(tmp_path / "slurm")
    assert slurm["world_size"] == 2 and slurm["allreduce"] == 3.0
    assert [p["node"] for p in slurm["placement"]] == ["0", "1"], "rank r must run on node r"
    assert slurm["losses"][-1] < slurm["losses"][0]

    direct_cmd = [f"{sys.prefix}/bin/deepspeed", "--num_gpus", "2", "--master_port", str(free_port()),
                  "--no_local_rank", ENTRY, "--config", str(config_file), f"out_dir={tmp_path / 'direct'}"]
    proc = subprocess.run(direct_cmd, cwd=ROOT, env=run_env(dict(os.environ)), capture_output=True, text=True,
                          timeout=JOB_TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    direct = read_result(tmp_path / "direct")
    # Same data shards per rank; a two-rank gloo sum is order-free, so the runs agree bit for bit.
    for key in ("allreduce", "losses", "weight", "bias"):
        assert slurm[key] == direct[key], key


def test_eval_sbatch_two_nodes(cluster, config_file, tmp_path):
    sbatch(cluster, "launch/slurm/eval.sbatch", config_file, tmp_path / "eval.log", "steps=0",
           f"out_dir={tmp_path / 'eval'}")
    result = read_result(tmp_path / "eval")
    assert result["world_size"] == 2 and result["allreduce"] == 3.0
    assert [p["node"] for p in result["placement"]] == ["0", "1"]
    # The master is nodeA reached at its NodeAddr (the test nodes' names don't resolve).
    assert "master nodeA (127.0.0.1:" in (tmp_path / "eval.log").read_text()
