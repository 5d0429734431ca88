"""Adapter files: our own format (safetensors + json) for every method, and PEFT's format for LoRA-family ones.

Our format, in a directory: `adapter.json` (format tag, the AdapterConfig, the adapted layer names) and
`adapter.safetensors` (each adapter layer's parameters and persistent buffers, e.g. IMoD's `mask_ids`, keyed by full
module name). Loading attaches the saved config to a base model and copies the tensors in, so IMoD's partition is
the saved one, not a regenerated one. Load before `deepspeed.initialize` (ZeRO-3 partitions parameters).

PEFT's format: `adapter_config.json` (written by `peft.LoraConfig`) + `adapter_model.safetensors` with PEFT's key
names, loadable by `peft.PeftModel.from_pretrained`. IMoD exports as plain LoRA: at inference it is LoRA.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.adapters import AttachReport, adapter_layers, adapter_state, attach
from pipeline.adapters.config import AdapterConfig
from pipeline.adapters.core import LowRankLinear
from pipeline.adapters.dora import DoRALinear
from pipeline.config import from_dict, to_dict

FORMAT = "avtrain-adapter/1"
CONFIG_FILE, WEIGHTS_FILE = "adapter.json", "adapter.safetensors"


def save_adapter(model: nn.Module, path: str | Path, cfg: AdapterConfig) -> None:
    """Write the adapter of `model` (attached with `cfg`) to directory `path`."""
    write_adapter(path, cfg, list(adapter_layers(model)), adapter_state(model))


def write_adapter(path: str | Path, cfg: AdapterConfig, layers: list[str], state: dict[str, torch.Tensor]) -> None:
    """Write the adapter files from its tensors (keyed by full name) without a model: the merge's
    `--keep-adapters` takes them straight from a run's export."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(state, str(path / WEIGHTS_FILE), metadata={"format": FORMAT})
    meta = {"format": FORMAT, "adapter": to_dict(cfg), "layers": layers}
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2))


def load_adapter(model: nn.Module, path: str | Path, contexts=None) -> tuple[AdapterConfig, AttachReport]:
    """Attach the adapter saved in `path` to the base `model` and load its tensors exactly."""
    path = Path(path)
    meta = json.loads((path / CONFIG_FILE).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path / CONFIG_FILE}: not an adapter saved by save_adapter (format {meta.get('format')!r})")
    cfg = from_dict(AdapterConfig, meta["adapter"], where=str(path / CONFIG_FILE))
    report = attach(model, cfg, contexts)
    if report.layers != meta["layers"]:
        raise ValueError(f"{path}: the model's target layers differ from the saved ones "
                         f"({len(report.layers)} vs {len(meta['layers'])})")
    saved = load_file(str(path / WEIGHTS_FILE))
    own = adapter_state(model)
    if saved.keys() != own.keys():
        missing, extra = sorted(own.keys() - saved.keys()), sorted(saved.keys() - own.keys())
        raise ValueError(f"{path / WEIGHTS_FILE}: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for key, tensor in own.items():
            tensor.copy_(saved[key])
    return cfg, report


def export_peft(model: nn.Module, path: str | Path, cfg: AdapterConfig, base_model_name_or_path: str | None = None) -> None:
    """Write a LoRA / DoRA / IMoD adapter in PEFT's format (IMoD as LoRA)."""
    from peft import LoraConfig

    layers = adapter_layers(model)
    if cfg.name not in ("lora", "dora", "imod") or not all(isinstance(m, LowRankLinear) for m in layers.values()):
        raise ValueError(f"export_peft: adapter '{cfg.name}' has no PEFT LoRA equivalent (lora, dora, imod only)")
    state = {}
    for name, layer in layers.items():
        prefix = f"base_model.model.{name}"
        state[f"{prefix}.lora_A.weight"] = layer.lora_A
        state[f"{prefix}.lora_B.weight"] = layer.lora_B
        if isinstance(layer, DoRALinear):
            state[f"{prefix}.lora_magnitude_vector"] = layer.magnitude
    path = Path(path)
    LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, use_rslora=cfg.rslora,
        use_dora=cfg.name == "dora", target_modules=list(layers), base_model_name_or_path=base_model_name_or_path,
    ).save_pretrained(str(path))
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(state, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
