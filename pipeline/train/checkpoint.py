"""Checkpoints that survive a crash, for an exact resume.

A checkpoint is `checkpoints/step-N/` of the run directory (`pipeline.rundir`): DeepSpeed's own files
(model/optimizer/scheduler states, ZeRO partitions), one `rank-R.json` + `rank-R.safetensors` per rank (loader
position, step counters, RNG states), the gathered export (`export/`), and a `COMPLETE` marker written last by rank 0
after every rank has finished and flushed its files (fsync). The marker lists every file with its size. `resume=auto`
only considers directories with the marker, so a crash mid-save is ignored, and `damage` checks a marked one before
it is loaded (sizes against the marker, the zip CRCs of DeepSpeed's files, the safetensors and json files), so a
checkpoint damaged later is skipped for the one before it.

Before writing, every rank checks that the checkpoint directory takes a write and has room for a checkpoint (the
size of the previous one, or an estimate); otherwise every rank raises the same one-line `CheckpointError` before
anything is written, and the previous complete checkpoint stays as it was. A write that fails anyway (a one-line
`WriteError` on the rank that failed) leaves a directory without the marker, which resume ignores.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from pipeline.adapters.config import AdapterConfig
from pipeline.rundir import COMPLETE, RunDir, export_dir, write_trainables
from pipeline.storage import WriteError, check_space, fsync_path, fsync_tree, write_failed


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class CheckpointError(RuntimeError):
    """Raised on every rank alike: no intact checkpoint to resume from, or no room to save one; one line."""


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _first_error(message: str | None) -> str | None:
    """The first rank's message of all ranks' (None: no rank has one), the same on every rank."""
    if not dist.is_initialized():
        return message
    gathered: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, message)
    return next((m for m in gathered if m), None)


def checkpoint_bytes(engine, run_dir: RunDir) -> int:
    """Room a new checkpoint takes: the newest complete one's size, or an estimate (module states, and an fp32 master
    copy plus Adam's two moments of the trainable parameters) with a 10% margin."""
    for previous in reversed(run_dir.complete_checkpoints()):
        try:
            files = json.loads((previous / COMPLETE).read_text()).get("files")
        except (OSError, ValueError):
            continue
        if files:
            return int(sum(files.values()) * 1.1)
    params = list(engine.module.parameters())
    numel = [getattr(p, "ds_numel", p.numel()) for p in params]  # ZeRO-3 keeps the full size in ds_numel
    module = sum(n * p.element_size() for n, p in zip(numel, params))
    trainable = sum(n for n, p in zip(numel, params) if p.requires_grad)
    return int((module + trainable * 4 * 4) * 1.1)


def _make_room(target: Path, needed: int) -> None:
    """Every rank: the target takes a write and has room (else all raise the same CheckpointError, and no directory
    is left). What is already at the target (a save that crashed, or the same step saved before) is removed first,
    its marker before anything else."""
    if _rank() == 0 and target.exists():
        (target / COMPLETE).unlink(missing_ok=True)
        shutil.rmtree(target)
    _barrier()
    try:
        check_space(target, needed)
        problem = None
    except WriteError as exc:
        problem = str(exc)
    problem = _first_error(problem)
    if problem:
        if _rank() == 0:
            shutil.rmtree(target, ignore_errors=True)
        raise CheckpointError(f"checkpoint not saved: {problem}")


def save_checkpoint(
    engine,
    run_dir: RunDir,
    step: int,
    rank_state: dict,
    adapter_cfg: AdapterConfig | None,
    keep_last: int,
    config_hash: str,
    rng: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save everything needed for an exact resume at optimizer step `step`; every rank must call it. `rng`: the RNG
    state at that step, when the caller has drawn since (default: the current one)."""
    target = run_dir.checkpoint(step)
    needed = checkpoint_bytes(engine, run_dir)
    _make_room(target, needed)
    rank = _rank()
    try:
        engine.save_checkpoint(str(target.parent), tag=target.name, save_latest=False)
        save_file(rng if rng is not None else rng_state(), str(target / f"rank-{rank}.safetensors"))
        (target / f"rank-{rank}.json").write_text(json.dumps({**rank_state, "step": step, "config_hash": config_hash}))
        write_trainables(engine.module, adapter_cfg, export_dir(target))
        fsync_tree(target)
        _barrier()
        if rank == 0:
            _mark_complete(target, {"step": step, "config_hash": config_hash})
    except WriteError:
        raise
    except Exception as exc:  # the directory has no COMPLETE marker: resume ignores it
        failure = write_failed(target, exc, needed)
        if failure is None:
            raise
        raise failure from exc
    if rank == 0:
        for old in run_dir.complete_checkpoints()[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return target


def _mark_complete(target: Path, info: dict) -> None:
    """Write COMPLETE (the files and their sizes) through a flushed temp file and a rename, then flush the rename."""
    files = {str(p.relative_to(target)): p.stat().st_size for p in sorted(target.rglob("*")) if p.is_file()}
    marker = target / (COMPLETE + ".tmp")
    marker.write_text(json.dumps({**info, "files": files}))
    fsync_path(marker)
    marker.rename(target / COMPLETE)
    fsync_path(target)


def damage(checkpoint: Path, rank: int = 0, world: int = 1) -> list[str]:
    """What is wrong with this rank's share (every world-th file) of a complete checkpoint, [] when intact: a file
    missing or of another size than the COMPLETE marker lists, a torch file whose zip CRCs fail, a safetensors or
    json file that does not parse. Ranks split the files; the caller gathers their answers."""
    try:
        files = json.loads((checkpoint / COMPLETE).read_text()).get("files")
    except (OSError, ValueError) as exc:
        return [f"{checkpoint / COMPLETE}: unreadable ({exc})"]
    if files is None:  # written before the marker listed its files: check what is there
        files = {str(p.relative_to(checkpoint)): None for p in checkpoint.rglob("*") if p.is_file()}
        files.pop(COMPLETE, None)
    problems = []
    for name in sorted(files)[rank::world]:
        problem = _file_damage(checkpoint / name, files[name])
        if problem:
            problems.append(problem)
    return problems


def _file_damage(path: Path, size: int | None) -> str | None:
    try:
        actual = path.stat().st_size
        if size is not None and actual != size:
            return f"{path}: {actual} bytes, {size} were written"
        if path.suffix == ".pt":
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad:
                return f"{path}: {bad} fails its CRC check"
        elif path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        elif path.suffix == ".json":
            json.loads(path.read_text())
    except (OSError, ValueError, zipfile.BadZipFile, SafetensorError) as exc:
        return f"{path}: {exc}"
    return None


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
