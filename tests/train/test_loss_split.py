"""One loss normalisation whatever the split: the same 8 samples as 1 process x 1 micro-batch, 1 process x 4
accumulation steps and 2 ranks x 2 (DeepSpeed ZeRO-2), padded and packed, give the gradient of the mean label-token
loss of all 8 (the training loop's `window_items` + `forward_backward`, with the chunked loss)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.train.conftest import REPO, free_port, launch_env


def run_ranks(nproc: int, model_yaml: Path, out: Path) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_port",
        str(free_port()),
        str(Path(__file__).with_name("ds_loss_split.py")),
        str(model_yaml),
        str(out),
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, env={**launch_env(), "PYTHONWARNINGS": "ignore"}, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_gradient_is_independent_of_the_split(tiny_components, tmp_path):
    model_yaml = tiny_components("llama")
    report = {**run_ranks(1, model_yaml, tmp_path / "one.json"), **run_ranks(2, model_yaml, tmp_path / "two.json")}
    cases = [f"{split}/{layout}" for split in ("1x1", "1x4", "2x2") for layout in ("padded", "packed")]
    assert set(cases) <= report.keys()
    for case in cases:
        assert report[case] < 1e-5, (case, report)
    assert report["reference_grad_max"] > 1e-3  # the gradients compared are not trivially zero
    assert report["per_micro_mean_diff"] > 1e-4  # and averaging per-micro-batch means would have failed
