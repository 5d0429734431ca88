"""Adapter files: our own format (safetensors + json) for every method, and PEFT's format where PEFT has one.

`adapter.json` is one format wherever an adapter is described (a kept adapter, a run's `final/` and checkpoint
exports): {"format": "avtrain-adapter/1", "adapter": the AdapterConfig or null (a stage-1 run), "layers": the adapted
layer names}. Files written before the format tag (a run's export) have the same fields and read the same.

A kept adapter is a directory with `adapter.json` and `adapter.safetensors` (each adapter layer's parameters and
persistent buffers, e.g. IMoD's `mask_ids`, keyed by full module name). Loading attaches the saved config to a base
model and copies the tensors in, so IMoD's partition is the saved one, not a regenerated one. Load before
`deepspeed.initialize` (ZeRO-3 partitions parameters). A shipped checkpoint carries one as `adapter/`
(`launch/merge.py --keep-adapters`); `load_model` loads such a checkpoint as it was trained.

PEFT's format: `adapter_config.json` (written by `peft.LoraConfig`) + `adapter_model.safetensors` with PEFT's key
names, loadable by `peft.PeftModel.from_pretrained`, for the methods that declare `peft_options`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.adapters import ADAPTERS, AttachReport, adapter_layers, adapter_state, attach
from pipeline.adapters.config import AdapterConfig
from pipeline.config import from_dict, to_dict
from pipeline.model.avllm import AVLLM, KEPT_ADAPTER_DIR
from pipeline.model.hub import local_dir

FORMAT = "avtrain-adapter/1"
CONFIG_FILE, WEIGHTS_FILE = "adapter.json", "adapter.safetensors"


def write_adapter_json(path: Path, cfg: AdapterConfig | None, layers: list[str]) -> None:
    """`path/adapter.json` (the format in the module docstring)."""
    meta = {"format": FORMAT, "adapter": to_dict(cfg) if cfg is not None else None, "layers": layers}
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2))


def read_adapter_json(path: Path) -> tuple[AdapterConfig | None, list[str]]:
    """(adapter config or None, adapted layer names) from `path/adapter.json`; ValueError naming the file."""
    file = path / CONFIG_FILE
    try:
        meta = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file}: cannot read the adapter description ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format", FORMAT) != FORMAT or "layers" not in meta:
        raise ValueError(f"{file}: not an adapter description written by avtrain (format {FORMAT})")
    cfg = from_dict(AdapterConfig, meta["adapter"], where=str(file)) if meta.get("adapter") else None
    return cfg, list(meta["layers"])


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
    write_adapter_json(path, cfg, layers)


def load_adapter(model: nn.Module, path: str | Path, contexts=None) -> tuple[AdapterConfig, AttachReport]:
    """Attach the adapter saved in `path` to the base `model` and load its tensors exactly."""
    path = Path(path)
    cfg, layers = read_adapter_json(path)
    if cfg is None:
        raise ValueError(f"{path / CONFIG_FILE}: describes no adapter")
    report = attach(model, cfg, contexts)
    if report.layers != layers:
        raise ValueError(
            f"{path}: the model's target layers differ from the saved ones ({len(report.layers)} vs {len(layers)})"
        )
    saved = load_file(str(path / WEIGHTS_FILE))
    own = adapter_state(model)
    if saved.keys() != own.keys():
        missing, extra = sorted(own.keys() - saved.keys()), sorted(saved.keys() - own.keys())
        raise ValueError(f"{path / WEIGHTS_FILE}: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for key, tensor in own.items():
            tensor.copy_(saved[key])
    return cfg, report


def export_peft(
    model: nn.Module, path: str | Path, cfg: AdapterConfig, base_model_name_or_path: str | None = None
) -> None:
    """Write the adapter in PEFT's LoRA format (methods with `peft_options`: LoRA, DoRA, and IMoD as LoRA)."""
    from peft import LoraConfig

    layers = adapter_layers(model)
    options = cfg.method.peft_options
    if options is None or not all(type(m).peft_options is not None for m in layers.values()):
        exporting = ", ".join(n for n, m in ADAPTERS.items() if m.peft_options is not None)
        raise ValueError(f"export_peft: adapter '{cfg.name}' has no PEFT LoRA equivalent ({exporting} only)")
    state = {
        f"base_model.model.{name}.{key}": tensor
        for name, layer in layers.items()
        for key, tensor in layer.peft_tensors().items()
    }
    path = Path(path)
    LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # PEFT annotates int; it scales by any number
        lora_dropout=cfg.dropout,
        use_rslora=cfg.rslora,
        target_modules=list(layers),
        base_model_name_or_path=base_model_name_or_path,
        **options,
    ).save_pretrained(str(path))
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(state, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})


def load_model(path: str | Path, **overrides: object) -> AVLLM:
    """A shipped checkpoint (a directory or a Hub id) as it was trained: `AVLLM.from_pretrained` plus its kept adapter,
    if it carries one."""
    path = local_dir(path)
    model = AVLLM.from_pretrained(path, base_only=True, **overrides)
    if (path / KEPT_ADAPTER_DIR).is_dir():
        load_adapter(model, path / KEPT_ADAPTER_DIR)
    return model
