"""Checkpoints that survive a crash, for an exact resume.

A checkpoint is `checkpoints/step-N/` of the run directory (`pipeline.rundir`): DeepSpeed's own files
(model/optimizer/scheduler states, ZeRO partitions), one `rank-R.json` + `rank-R.safetensors` per rank (loader
position, step counters, RNG states), the gathered export (`export/`), and a `COMPLETE` marker written last by rank 0
after every rank has finished. `resume=auto` only considers directories with the marker, so a crash mid-save is
ignored.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from pipeline.adapters.config import AdapterConfig
from pipeline.rundir import COMPLETE, RunDir, export_dir, write_trainables


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(
    engine,
    run_dir: RunDir,
    step: int,
    rank_state: dict,
    adapter_cfg: AdapterConfig | None,
    keep_last: int,
    config_hash: str,
) -> Path:
    """Save everything needed for an exact resume at optimizer step `step`; every rank must call it."""
    target = run_dir.checkpoint(step)
    engine.save_checkpoint(str(target.parent), tag=target.name, save_latest=False)
    rank = _rank()
    save_file(rng_state(), str(target / f"rank-{rank}.safetensors"))
    (target / f"rank-{rank}.json").write_text(json.dumps({**rank_state, "step": step, "config_hash": config_hash}))
    write_trainables(engine.module, adapter_cfg, export_dir(target))
    _barrier()
    if rank == 0:
        marker = target / (COMPLETE + ".tmp")
        marker.write_text(json.dumps({"step": step, "config_hash": config_hash}))
        marker.rename(target / COMPLETE)
        for old in run_dir.complete_checkpoints()[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return target


def load_checkpoint(engine, checkpoint: Path, config_hash: str) -> dict:
    """Restore engine, RNG and this rank's state from `checkpoint`; returns the rank state (loader, step)."""
    rank = _rank()
    state_file = checkpoint / f"rank-{rank}.json"
    if not state_file.is_file():
        raise ValueError(f"{checkpoint}: no state for rank {rank} (was it saved with another world size?)")
    state = json.loads(state_file.read_text())
    if state["config_hash"] != config_hash:
        raise ValueError(
            f"{checkpoint}: saved by a run with a different config; exact resume needs the same "
            "config (start a new output_dir, or resume=none)"
        )
    path, _ = engine.load_checkpoint(str(checkpoint.parent), tag=checkpoint.name, load_module_strict=False)
    if path is None:
        raise ValueError(f"{checkpoint}: DeepSpeed could not load this checkpoint")
    set_rng_state(load_file(str(checkpoint / f"rank-{rank}.safetensors")))
    return state
