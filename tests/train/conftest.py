"""Helpers for the training tests: a 2-rank DeepSpeed launcher and overrides for the tiny components (the shared
stage-1 run fixture, `stage1_run`, is in tests/conftest.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEEPSPEED = str(Path(sys.executable).parent / "deepspeed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(REPO)}


def train_cmd(config: Path | str, overrides: list[str], nproc: int = 2) -> list[str]:
    return [DEEPSPEED, "--num_gpus", str(nproc), "--master_port", str(free_port()), "launch/train.py",
            "--config", str(config), *overrides]


def run_train(config: Path | str, overrides: list[str], nproc: int = 2, timeout: int = 300) -> Path:
    """Launch `launch/train.py` on `nproc` CPU ranks; returns the run directory (fails the test on error)."""
    proc = subprocess.run(train_cmd(config, overrides, nproc), cwd=REPO, env=launch_env(), capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"training failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    out = next(o.split("=", 1)[1] for o in overrides if o.startswith("output_dir="))
    return Path(out)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def log_text(log: Path) -> str:
    """A log as it stands; one still being written may end inside a multi-byte character (tqdm's bar)."""
    return log.read_bytes().decode(errors="replace") if log.exists() else ""


def common_overrides(train_data: dict, out: Path, **extra) -> list[str]:
    comp = train_data["components"]
    base = {"output_dir": out, "model.llm": comp / "llm", "model.vision": comp / "vision",
            "model.audio": comp / "audio", "data.root": train_data["shards"], "data.micro_batch_size": 4,
            "data.shuffle_buffer": 16}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def assert_same_trainables(expected_run: Path, run: Path, atol: float = 1e-6) -> None:
    """The two runs exported the same trainable tensors (final/trainables.safetensors), to `atol`."""
    import torch
    from safetensors.torch import load_file

    a = load_file(expected_run / "final/trainables.safetensors")
    b = load_file(run / "final/trainables.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=atol)

