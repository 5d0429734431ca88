"""A training run's directory: its layout, and the trainable tensors it exports.

    config.yaml              the resolved run config (what `launch/merge.py` reads the base model paths from)
    ds_config.json           the resolved DeepSpeed config
    metrics.jsonl, loss.png  the training log (json lines) and its loss curve
    tb/, wandb/, trackers.json  the experiment trackers' files (`train.report_to`) and their run ids (for resume)
    data_report.json         skipped samples by reason, unreadable shards, samples trained without a modality
    checkpoints/step-N/      DeepSpeed's files, rank-R.json + rank-R.safetensors, export/, and COMPLETE (written last)
    final/                   the export of the finished run

An export (`final/`, or a checkpoint's `export/`) holds `trainables.safetensors` — every trainable parameter plus all
the adapters' own tensors, frozen ones included (IMoD's partition masks, DeLo's task keys and earlier tasks' pools),
keyed by their names in the AVLLM, gathered from ZeRO-3 partitions on rank 0 — and `adapter.json`
(`pipeline.adapters.io`'s format: the adapter config and adapted layers, or null for a stage-1 run). A shipped
checkpoint (the merge's output) carries `merge.json`, its manifest.

What is written here is durable before it is announced (`pipeline.storage`): files are flushed before the rename or
marker that makes them visible, and a directory that cannot take a write (read-only, too little free space) fails
with one line (`WriteError`) that names it and the space needed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.adapters import adapter_layers, adapter_state, attach
from pipeline.adapters.config import AdapterConfig
from pipeline.adapters.io import CONFIG_FILE as ADAPTER_JSON
from pipeline.adapters.io import read_adapter_json, write_adapter_json
from pipeline.storage import WriteError, check_space, fsync_path, fsync_tree, write_failed

TRAINABLES = "trainables.safetensors"
COMPLETE = "COMPLETE"
MERGE_MANIFEST = "merge.json"


class RunDir:
    """Paths of one run directory (see the module docstring); creating a RunDir touches nothing on disk."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.config = self.root / "config.yaml"
        self.ds_config = self.root / "ds_config.json"
        self.metrics = self.root / "metrics.jsonl"
        self.tensorboard = self.root / "tb"
        self.trackers = self.root / "trackers.json"
        self.loss_plot = self.root / "loss.png"
        self.data_report = self.root / "data_report.json"
        self.checkpoints = self.root / "checkpoints"
        self.final = self.root / "final"

    def __str__(self) -> str:
        return str(self.root)

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step}"

    def complete_checkpoints(self) -> list[Path]:
        """Checkpoint directories with the COMPLETE marker, oldest first."""
        root = self.checkpoints
        found = [p for p in root.glob("step-*") if (p / COMPLETE).is_file()] if root.is_dir() else []
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def finished(self) -> bool:
        """Whether the run wrote its final export."""
        return (self.final / TRAINABLES).is_file()

    def export(self, checkpoint: str | Path | None = None) -> Path:
        """The export of the finished run, or of a complete checkpoint (`step-N`, or its directory or export/);
        ValueError when that checkpoint is not complete."""
        if checkpoint is None:
            return self.final
        found = Path(checkpoint) if Path(checkpoint).is_dir() else self.checkpoints / str(checkpoint)
        if found.name == "export":
            found = found.parent
        if not (found / COMPLETE).is_file():
            raise ValueError(f"{found}: not a complete checkpoint of {self.root} (no {COMPLETE} marker)")
        return export_dir(found)


def export_dir(checkpoint: Path) -> Path:
    return checkpoint / "export"


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
    """Write the export `out/` atomically (a temp directory, flushed, renamed into place) on rank 0; every rank must
    call it. A failed write (WriteError) leaves the previous `out/`, if any, and no temp directory."""
    tensors = gather_trainables(model)
    if _rank() == 0:
        tmp = out.with_name(out.name + ".tmp")
        needed = sum(t.numel() * t.element_size() for t in tensors.values())
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            check_space(tmp, needed)
            save_file(tensors, str(tmp / TRAINABLES))
            write_adapter_json(tmp, adapter_cfg, list(adapter_layers(model)))
            fsync_tree(tmp)
        except WriteError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except Exception as exc:
            failure = write_failed(tmp, exc, needed)  # judged before the temp directory frees its space
            shutil.rmtree(tmp, ignore_errors=True)
            if failure is None:
                raise
            raise failure from exc
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        fsync_path(out.parent)
    _barrier()


def read_export(directory: Path) -> tuple[AdapterConfig | None, list[str]]:
    """The adapter config (None for stage 1) and adapted layers of an export; ValueError naming what is missing."""
    for name in (TRAINABLES, ADAPTER_JSON):
        if not (directory / name).is_file():
            raise ValueError(f"{directory}: no {name} (did the run finish? pick a checkpoint with --checkpoint)")
    return read_adapter_json(directory)


def export_has(directory: Path, prefix: str) -> bool:
    """Whether an export holds tensors under `prefix` (read from the header, nothing loaded)."""
    with safe_open(str(directory / TRAINABLES), framework="pt") as f:
        return any(k.startswith(prefix) for k in f.keys())


def load_trainables(model: nn.Module, directory: str | Path, prefixes: tuple[str, ...] | None = None) -> list[str]:
    """Attach the saved adapter (if any, and if the model has none yet) and copy the saved tensors in; `prefixes`
    restricts what is loaded (stage 2 takes only `projectors.` from a stage-1 run). Returns the loaded names."""
    directory = Path(directory)
    if not (directory / TRAINABLES).is_file():
        raise FileNotFoundError(f"{directory}: no {TRAINABLES} (not a run's final/ or checkpoint directory)")
    adapter, _ = read_adapter_json(directory)
    saved = load_file(str(directory / TRAINABLES))
    if prefixes is None and adapter is not None and not adapter_layers(model):
        attach(model, adapter)
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
                raise ValueError(
                    f"{directory / TRAINABLES}: '{key}' is {tuple(tensor.shape)}, the model's is "
                    f"{tuple(own[key].shape)}"
                )
            own[key].copy_(tensor)
    return sorted(saved)
