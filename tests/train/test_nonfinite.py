"""Non-finite losses: each one drops its micro-batch on every rank; K in a row save a checkpoint and stop."""

from __future__ import annotations

import subprocess

from tests.train.conftest import REPO, common_overrides, launch_env, train_cmd


def test_diverging_run_saves_and_stops_with_a_clear_message(train_data, tmp_path):
    out = tmp_path / "diverge"
    # lr 1e30: Adam's first update puts the projectors at ~1e30, so every later loss is inf or nan
    overrides = common_overrides(train_data, out, max_steps=8, **{"optim.lr": 1e30, "optim.warmup_ratio": 0,
                                                                  "train.max_bad_steps": 2})
    proc = subprocess.run(train_cmd(REPO / "configs/demo/stage1.yaml", overrides), cwd=REPO, env=launch_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    log = proc.stdout + proc.stderr
    assert "error: 2 consecutive non-finite losses at step 1" in log, log[-3000:]
    assert "micro-batch dropped (1 in a row)" in log
    assert (out / "checkpoints" / "step-1" / "COMPLETE").is_file()
    assert not (out / "final").exists()
