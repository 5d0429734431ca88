"""Checkpoints that survive a crash, and the trainable-only export the merge step reads.

A checkpoint is `checkpoints/step-N/`: DeepSpeed's own files (model/optimizer/scheduler states, ZeRO partitions),
one `rank-R.json` + `rank-R.safetensors` per rank (loader position, step counters, RNG states), the gathered
`trainables.safetensors`, and a `COMPLETE` marker written last by rank 0 after every rank has finished. `resume=auto`
only considers directories with the marker, so a crash mid-save is ignored.

`final/` (and each checkpoint) holds `trainables.safetensors` — every trainable parameter plus all the adapters' own
tensors, frozen ones included (IMoD's partition masks, DeLo's task keys and earlier tasks' pools), keyed by their
names in the AVLLM, gathered from ZeRO-3 partitions on rank 0 — and `adapter.json` (the adapter config and adapted
layers, or null for a stage-1 run).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.adapters import adapter_layers, adapter_state, attach
from pipeline.adapters.config import AdapterConfig
from pipeline.config import from_dict, to_dict

TRAINABLES = "trainables.safetensors"
ADAPTER_JSON = "adapter.json"
COMPLETE = "COMPLETE"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def gather_trainables(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full copies (on rank 0; empty elsewhere) of the trainable parameters and the adapters' own tensors."""
    out: dict[str, torch.Tensor] = {}
    params = dict(model.named_parameters())
    adapter = adapter_state(model)
    for name, param in params.items():
        if not (param.requires_grad or name in adapter):
            continue
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):  # no-op unless ZeRO-3 partitioned
            if _rank() == 0:
                out[name] = param.detach().to("cpu", copy=True).contiguous()
    if _rank() == 0:
        for name, buffer in adapter.items():
            if name not in params:
                out[name] = buffer.detach().cpu().contiguous()
    return out


def write_trainables(model: nn.Module, adapter_cfg: AdapterConfig | None, out: Path) -> None:
    """Write `out/` atomically (a temp directory renamed into place) on rank 0; every rank must call it."""
    tensors = gather_trainables(model)
    if _rank() == 0:
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / TRAINABLES))
        meta = {"adapter": to_dict(adapter_cfg) if adapter_cfg else None, "layers": list(adapter_layers(model))}
        (tmp / ADAPTER_JSON).write_text(json.dumps(meta, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    _barrier()


def load_trainables(model: nn.Module, directory: str | Path, prefixes: tuple[str, ...] | None = None) -> list[str]:
    """Attach the saved adapter (if any, and if the model has none yet) and copy the saved tensors in; `prefixes`
    restricts what is loaded (stage 2 takes only `projectors.` from a stage-1 run). Returns the loaded names."""
    directory = Path(directory)
    if not (directory / TRAINABLES).is_file():
        raise FileNotFoundError(f"{directory}: no {TRAINABLES} (not a run's final/ or checkpoint directory)")
    meta = json.loads((directory / ADAPTER_JSON).read_text())
    saved = load_file(str(directory / TRAINABLES))
    if prefixes is None and meta.get("adapter") and not adapter_layers(model):
        attach(model, from_dict(AdapterConfig, meta["adapter"], where=str(directory / ADAPTER_JSON)))
    if prefixes is not None:
        saved = {k: v for k, v in saved.items() if k.startswith(prefixes)}
        if not saved:
            raise ValueError(f"{directory / TRAINABLES}: holds no tensors under {', '.join(prefixes)}")
    own = dict(model.named_parameters()) | {k: v for k, v in model.named_buffers()}
    unknown = sorted(k for k in saved if k not in own)
    if unknown:
        raise ValueError(f"{directory / TRAINABLES}: tensors the model does not have, e.g. {unknown[:3]}")
    with torch.no_grad():
        for key, tensor in saved.items():
            if own[key].shape != tensor.shape:
                raise ValueError(f"{directory / TRAINABLES}: '{key}' is {tuple(tensor.shape)}, the model's is "
                                 f"{tuple(own[key].shape)}")
            own[key].copy_(tensor)
    return sorted(saved)


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(engine, run_dir: Path, step: int, rank_state: dict, adapter_cfg: AdapterConfig | None,
                    keep_last: int, config_hash: str) -> Path:
    """Save everything needed for an exact resume at optimizer step `step`; every rank must call it."""
    root = run_dir / "checkpoints"
    tag = f"step-{step}"
    engine.save_checkpoint(str(root), tag=tag, save_latest=False)
    target = root / tag
    rank = _rank()
    save_file(rng_state(), str(target / f"rank-{rank}.safetensors"))
    (target / f"rank-{rank}.json").write_text(json.dumps({**rank_state, "step": step, "config_hash": config_hash}))
    write_trainables(engine.module, adapter_cfg, target / "export")
    _barrier()
    if rank == 0:
        marker = target / (COMPLETE + ".tmp")
        marker.write_text(json.dumps({"step": step, "config_hash": config_hash}))
        marker.rename(target / COMPLETE)
        for old in complete_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return target


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories with the COMPLETE marker, oldest first."""
    root = Path(run_dir) / "checkpoints"
    found = [p for p in root.glob("step-*") if (p / COMPLETE).is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def load_checkpoint(engine, checkpoint: Path, config_hash: str) -> dict:
    """Restore engine, RNG and this rank's state from `checkpoint`; returns the rank state (loader, step)."""
    rank = _rank()
    state_file = checkpoint / f"rank-{rank}.json"
    if not state_file.is_file():
        raise ValueError(f"{checkpoint}: no state for rank {rank} (was it saved with another world size?)")
    state = json.loads(state_file.read_text())
    if state["config_hash"] != config_hash:
        raise ValueError(f"{checkpoint}: saved by a run with a different config; exact resume needs the same "
                         "config (start a new output_dir, or resume=none)")
    path, _ = engine.load_checkpoint(str(checkpoint.parent), tag=checkpoint.name, load_module_strict=False)
    if path is None:
        raise ValueError(f"{checkpoint}: DeepSpeed could not load this checkpoint")
    set_rng_state(load_file(str(checkpoint / f"rank-{rank}.safetensors")))
    return state

