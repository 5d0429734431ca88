"""Whether a run may start in its `output_dir`, and moving an earlier run aside when the config asks for it.

A directory that already holds a run (a `final/` export or a complete checkpoint) is never written over: a run that
would start from step 0 there (`resume=none`, `resume=auto` with no complete checkpoint, or a checkpoint of another
directory) is refused, unless `train.existing_run=move`, which renames the old run to a timestamped sibling
(`NAME.moved-YYYYmmdd-HHMMSS`) so the two are never interleaved. `resume=auto` with a complete checkpoint continues
that run, if the checkpoint records the same config hash (`check_same_config`, before any rank starts).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pipeline.rundir import COMPLETE, RunDir
from pipeline.train.config import RunConfig


def held_run(run_dir: RunDir) -> str | None:
    """What of an earlier run `run_dir` holds ("final/ and 2 complete checkpoint(s)"), or None when it holds none. A
    checkpoint without its COMPLETE marker (a run killed before its first save finished) holds nothing to keep."""
    parts = []
    if run_dir.final.exists():
        parts.append("final/")
    complete = run_dir.complete_checkpoints()
    if complete:
        parts.append(f"{len(complete)} complete checkpoint(s)")
    return " and ".join(parts) or None


def _resumes_here(cfg: RunConfig, run_dir: RunDir) -> bool:
    """Whether the run continues the one already in its directory instead of starting over."""
    if cfg.resume == "auto":
        return bool(run_dir.complete_checkpoints())
    if cfg.resume == "none":
        return False
    return Path(cfg.resume).resolve().is_relative_to(run_dir.root.resolve())


def check_writable(root: Path) -> None:
    """ValueError unless `root` is, or can be created as, a directory this process may write."""
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"output_dir: {root} cannot be created, {existing} is a file; pick another output_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"output_dir: {existing} is not writable; pick another output_dir")


def check_same_config(cfg: RunConfig, checkpoint: Path) -> None:
    """ValueError when `checkpoint` records the hash of another config (an exact resume needs the same one); the
    ranks check it again on load (`pipeline.train.checkpoint.load_checkpoint`)."""
    from pipeline.train.loop import config_hash  # the loop imports this module

    try:
        saved = json.loads((checkpoint / COMPLETE).read_text()).get("config_hash")
    except (OSError, ValueError, AttributeError):
        return  # an unreadable marker is for the resume itself to judge
    if saved is not None and saved != config_hash(cfg):
        raise ValueError(
            f"resume=auto: {checkpoint} was saved by a run with a different config, and an exact resume needs the "
            "same one; pick another output_dir, or resume=none with train.existing_run=move"
        )


def check_output_dir(cfg: RunConfig) -> bool:
    """True when `output_dir` holds a run that `train.existing_run=move` moves aside before training; ValueError
    (one line) when it cannot be written, or holds a run and the config does not say to move it aside."""
    run_dir = RunDir(cfg.output_dir)
    check_writable(run_dir.root.absolute())
    held = held_run(run_dir)
    if cfg.resume == "auto" and run_dir.complete_checkpoints():
        check_same_config(cfg, run_dir.complete_checkpoints()[-1])
    if held is None or _resumes_here(cfg, run_dir):
        return False
    if cfg.train.existing_run == "move":
        return True
    how = "resume=auto continues it" if run_dir.complete_checkpoints() else "it has no complete checkpoint to resume"
    raise ValueError(
        f"output_dir: {run_dir.root} already holds a run ({held}) and this one would start over ({how}); pick "
        "another output_dir, or set train.existing_run=move to move the old run aside"
    )


def move_aside(root: Path) -> Path:
    """Rename `root` to a timestamped sibling that does not exist yet; returns where it went."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = root.with_name(f"{root.name}.moved-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = root.with_name(f"{root.name}.moved-{stamp}-{n}")
    root.rename(target)
    return target
