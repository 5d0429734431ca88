"""Checkpoints you can trust: resume=auto passes over a damaged newest checkpoint to the one before it (and says so),
and a checkpoint that does not fit on the disk stops the run with one line and leaves the previous one intact."""

from __future__ import annotations

import shutil
import subprocess

import torch
from safetensors.torch import load_file

from pipeline.train.checkpoint import damage
from tests.train.conftest import REPO, common_overrides, launch_env, metrics, train_cmd

CONFIG = REPO / "configs/demo/stage1.yaml"


def train(overrides: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        train_cmd(CONFIG, overrides), cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=600
    )


def test_resume_auto_falls_back_to_the_newest_intact_checkpoint(train_data, tmp_path):
    out = tmp_path / "run"
    overrides = common_overrides(train_data, out, max_steps=4, **{"train.save_every": 2})
    first = train(overrides)
    assert first.returncode == 0, first.stderr[-3000:]
    uninterrupted = load_file(out / "final/trainables.safetensors")
    older, newest = out / "checkpoints/step-2", out / "checkpoints/step-4"
    assert damage(older) == [] and damage(newest) == []

    # same size, bytes flipped inside: the zip CRC of DeepSpeed's file catches it
    model_states = older / "mp_rank_00_model_states.pt"
    original = model_states.read_bytes()
    middle = len(original) // 2
    model_states.write_bytes(
        original[:middle] + bytes(b ^ 0xFF for b in original[middle : middle + 64]) + original[middle + 64 :]
    )
    assert any("CRC" in p for p in damage(older)), damage(older)
    model_states.write_bytes(original)

    # the newest checkpoint loses the second half of rank 1's optimizer partition
    partition = newest / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    partition.write_bytes(partition.read_bytes()[: partition.stat().st_size // 2])
    shutil.rmtree(out / "final")
    again = train(overrides)
    log = again.stdout + again.stderr
    assert again.returncode == 0, log[-3000:]
    assert f"resume: skipping damaged checkpoint {newest} (1 bad files, e.g. {partition}:" in log, log[-3000:]
    assert f"resumed from {older} at step 2" in log
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4]
    resumed = load_file(out / "final/trainables.safetensors")
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6)
    assert damage(newest) == []  # saved again, intact


def test_full_disk_at_checkpoint_stops_in_one_line_and_keeps_the_previous(train_data, small_disk):
    """A real full disk: output_dir on a 3.2 MiB tmpfs, room for one checkpoint of the tiny model (1.9 MiB), not two."""
    out = small_disk(3200) / "run"
    proc = train(common_overrides(train_data, out, max_steps=3, **{"train.save_every": 1}))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-3000:]
    errors = [line for line in log.splitlines() if "error:" in line]
    assert len(errors) == 1, log[-3000:]
    assert errors[0].startswith(f"error: checkpoint not saved: {out / 'checkpoints' / 'step-2'}: "), errors
    assert " MiB free, about " in errors[0] and " MiB needed;" in errors[0]
    assert "Traceback" not in log
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-1"]
    assert damage(out / "checkpoints" / "step-1") == []
    assert not (out / "final").exists()
