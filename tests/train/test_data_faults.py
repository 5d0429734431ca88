"""Data faults during a real 2-rank run (stage 1: 4 shards of 8 samples, micro-batch 4, one worker per rank, so
4 steps per epoch and each rank reads 2 shards per epoch).

Launch 1 starts with the two shards that rank 1 reads in epoch 1 garbled (the plan reads only the index, so a worker
finds out when it reaches a shard). Epoch 0 deals them one to each rank: every rank skips its unreadable shard and
fills its quota with a second pass, so both run the 4 steps. In epoch 1 rank 1 has nothing decodable left: every
rank stops at step 4 with a complete checkpoint, exit 4 and one line. Launch 2 resumes that checkpoint with those
shards repaired but another one, read intact in epoch 0, now truncated: it is skipped, counted and named, and the
run ends after 8 steps on both ranks.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from pipeline.config import load_config
from pipeline.data.plan import epoch_plan, resolve_all
from pipeline.train.config import RunConfig
from tests.train.conftest import REPO, common_overrides, launch_env, metrics, train_cmd

CONFIG = REPO / "configs/demo/stage1.yaml"


def overrides(data_root, out, seed: int) -> list[str]:
    return [f"data.root={data_root}", f"data.seed={seed}", "train.epochs=2", f"output_dir={out}"]


def shares(cfg: RunConfig, epoch: int) -> list[set[str]]:
    """Each rank's shards in `epoch`, from the plan every rank computes (one worker per rank)."""
    plan = epoch_plan(resolve_all(cfg.data), cfg.data, epoch, 0, 2)
    return [{ref.path for ref in share} for share in plan.shares]


def launch(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        train_cmd(CONFIG, args), cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def dry_run(train_data, tmp_path_factory) -> dict:
    """Launch 1 (see the module docstring): its process, run directory, the garbled shards and the pristine copies."""
    tmp = tmp_path_factory.mktemp("data-faults")
    root, pristine, out = tmp / "shards", tmp / "pristine", tmp / "run"
    for source in ("llava", "audiocaps"):
        shutil.copytree(train_data["shards"] / source / "train", root / source / "train")
    shutil.copytree(root, pristine)
    base = common_overrides(train_data, out)
    for seed in range(50):  # a seed whose epoch 0 splits rank 1's epoch-1 shards over both ranks
        cfg = load_config(RunConfig, CONFIG, base + overrides(root, out, seed))
        rank1_later = shares(cfg, 1)[1]
        if all(len(share & rank1_later) == 1 for share in shares(cfg, 0)):
            break
    else:
        raise AssertionError("no seed splits the shards as the test needs")
    for path in rank1_later:
        with open(path, "wb") as f:
            f.write(b"not a tar any more" * 64)
    args = base + overrides(root, out, seed)
    return {
        "proc": launch(args),
        "out": out,
        "args": args,
        "garbled": sorted(rank1_later),
        "root": root,
        "pristine": pristine,
        "cfg": cfg,
    }


def test_a_rank_without_decodable_data_stops_every_rank_with_one_line_and_a_checkpoint(dry_run):
    proc, out = dry_run["proc"], dry_run["out"]
    log = proc.stdout + proc.stderr
    assert proc.returncode == 4, log[-4000:]
    assert "Traceback" not in log, log[-4000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, log[-4000:]
    line = errors[0]
    assert line.startswith("error: data: rank 1 has no decodable batch left: a whole pass over worker 0's shards ")
    assert all(path in line for path in dry_run["garbled"]), line
    assert "skipped on rank 1: unreadable_shard=" in line, line
    assert f"stopped after step 4 of 8 with a complete checkpoint in {out / 'checkpoints' / 'step-4'}" in line
    assert (out / "checkpoints" / "step-4" / "COMPLETE").is_file()
    assert [p.name for p in (out / "checkpoints").glob("step-*")] == ["step-4"]
    assert not (out / "final").exists()
    # epoch 0: each rank met one garbled shard, skipped it, and still ran all 4 steps
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["skipped_samples"] >= 2, rows
    for path in dry_run["garbled"]:
        assert f"data: cannot read shard {path}: " in proc.stderr


def test_an_unreadable_shard_is_skipped_and_every_rank_runs_the_same_steps(dry_run):
    """Launch 2: resume=auto from the dry run's checkpoint, the garbled shards repaired, and a shard that epoch 0 read
    intact truncated to half (its first samples still read, then the tar ends)."""
    out, root = dry_run["out"], dry_run["root"]
    shutil.rmtree(root)
    shutil.copytree(dry_run["pristine"], root)
    rank0_later = sorted(shares(dry_run["cfg"], 1)[0])
    truncated = rank0_later[0]
    data = open(truncated, "rb").read()
    open(truncated, "wb").write(data[: len(data) // 2])

    proc = launch([*dry_run["args"], "resume=auto"])
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert f"resumed from {out / 'checkpoints' / 'step-4'} at step 4" in log
    assert [r["step"] for r in metrics(out)] == list(range(1, 9))
    report = json.loads((out / "data_report.json").read_text())
    assert report["skipped"]["unreadable_shard"] >= 1, report
    assert [s.split(": ")[0] for s in report["bad_shards"]] == [truncated], report
    assert report["micro_batches_per_rank"] == [4, 4], report  # epoch 1 in full on both ranks
    assert f"data: cannot read shard {truncated}: " in proc.stderr
    assert (out / "final").is_dir()
