"""An output_dir holding another run is never written over: refused before any process group, or (with
train.existing_run=move) moved aside; a single process trains without a launcher (`python launch/train.py`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch.distributed as dist

from launch.train import main
from pipeline.rundir import RunDir
from tests.train.conftest import REPO, common_overrides, launch_env, metrics

STAGE1 = str(REPO / "configs/demo/stage1.yaml")


def old_run(root, complete: bool = False):
    """A directory holding an earlier run: final/ and a checkpoint (complete or not), each with a file of its own."""
    (root / "final").mkdir(parents=True)
    (root / "final" / "trainables.safetensors").write_text("the earlier run's weights")
    step = root / "checkpoints" / "step-3"
    step.mkdir(parents=True)
    (step / "rank-0.json").write_text("{}")
    if complete:
        (step / "COMPLETE").write_text("{}")
    return root


@pytest.mark.parametrize("resume, complete, expected", [
    ("none", False, "(final/) and this one would start over (it has no complete checkpoint to resume)"),
    ("none", True, "(final/ and 1 complete checkpoint(s)) and this one would start over (resume=auto continues it)"),
    ("auto", False, "(final/) and this one would start over (it has no complete checkpoint to resume)"),
])
def test_a_run_that_would_start_over_in_another_runs_directory_is_refused(capsys, train_data, tmp_path, resume,
                                                                          complete, expected):
    out = old_run(tmp_path / "run", complete)
    argv = ["--config", STAGE1, *common_overrides(train_data, out), f"resume={resume}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: output_dir: {out} already holds a run {expected}; pick another output_dir, or set "
                          "train.existing_run=move to move the old run aside"), err
    assert "\n" not in err
    assert not dist.is_initialized()
    assert (out / "final" / "trainables.safetensors").read_text() == "the earlier run's weights"


def test_resume_auto_from_a_checkpoint_of_another_config_is_one_line(capsys, train_data, tmp_path):
    out = old_run(tmp_path / "run", complete=True)
    (out / "checkpoints" / "step-3" / "COMPLETE").write_text(json.dumps({"step": 3, "config_hash": "0123456789abcdef"}))
    assert main(["--config", STAGE1, *common_overrides(train_data, out), "resume=auto"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: resume=auto: {out / 'checkpoints' / 'step-3'} was saved by a run with a different config, "
                   "and an exact resume needs the same one; pick another output_dir, or resume=none with "
                   "train.existing_run=move")
    assert not dist.is_initialized()


def test_a_run_killed_before_its_first_complete_checkpoint_is_started_over(train_data, tmp_path):
    """Only a half-written checkpoint (no COMPLETE marker, no final/): nothing to keep, resume=auto starts over."""
    from pipeline.config import load_config
    from pipeline.train.config import RunConfig
    from pipeline.train.output_dir import check_output_dir

    out = tmp_path / "run"
    (out / "checkpoints" / "step-2").mkdir(parents=True)
    for resume in ("auto", "none"):
        cfg = load_config(RunConfig, STAGE1, [*common_overrides(train_data, out), f"resume={resume}"])
        assert check_output_dir(cfg) is False


def test_a_checkpoint_of_the_same_directory_may_restart_it(train_data, tmp_path):
    """resume=auto with a complete checkpoint, or an explicit checkpoint inside output_dir, continue that run."""
    from pipeline.config import load_config
    from pipeline.train.config import RunConfig
    from pipeline.train.output_dir import check_output_dir

    out = old_run(tmp_path / "run", complete=True)
    for resume in ("auto", str(out / "checkpoints" / "step-3")):
        cfg = load_config(RunConfig, STAGE1, [*common_overrides(train_data, out), f"resume={resume}"])
        assert check_output_dir(cfg) is False


def test_one_process_without_a_launcher_trains_and_moves_the_old_run_aside(train_data, tmp_path):
    """`python launch/train.py` (no deepspeed/torchrun: no RANK, no MASTER_PORT) trains stage 1 as one process; the
    earlier run in output_dir is renamed to a timestamped sibling, untouched, and the log says where."""
    out = old_run(tmp_path / "run")
    env = {k: v for k, v in launch_env().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    overrides = common_overrides(train_data, out, max_steps=2, **{"train.existing_run": "move",
                                                                  "data.num_workers": 0})
    proc = subprocess.run([sys.executable, "launch/train.py", "--config", STAGE1, *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.moved-")]
    assert len(moved) == 1
    assert (moved[0] / "final" / "trainables.safetensors").read_text() == "the earlier run's weights"
    assert (moved[0] / "checkpoints" / "step-3" / "rank-0.json").is_file()
    assert f"moved the earlier run in {out} aside to {moved[0]}" in proc.stdout + proc.stderr
    assert "mpi4py" not in proc.stderr
    assert [r["step"] for r in metrics(out)] == [1, 2]
    assert RunDir(out).finished() and [p.name for p in RunDir(out).complete_checkpoints()] == ["step-2"]
