"""The DeepSpeed config: ZeRO settings from a `configs/ds/*.json`, batch/precision/clipping from the run config.

The run config is the one source of truth for the micro batch, gradient accumulation, clipping and precision. The
JSON may repeat them (as LLaVA's do), but a value that disagrees is an error rather than a silent override; the
resolved config is written into the run directory as `ds_config.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.train.config import RunConfig

DEFAULT_ZERO = {"stage": 2, "overlap_comm": False, "contiguous_gradients": True}


def _derived(cfg: RunConfig, world_size: int) -> dict:
    micro = cfg.data.micro_batch_size
    gas = cfg.optim.gradient_accumulation_steps
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": gas,
        "train_batch_size": micro * gas * world_size,
        "gradient_clipping": cfg.optim.grad_clip,
        "bf16": {"enabled": cfg.model.dtype == "bf16"},
        "fp16": {"enabled": cfg.model.dtype == "fp16"},
    }


def _conflicts(given: dict, derived: dict, prefix: str = "") -> list[str]:
    out = []
    for key, want in derived.items():
        if key not in given:
            continue
        have = given[key]
        if isinstance(want, dict) and isinstance(have, dict):
            out += _conflicts(have, want, f"{prefix}{key}.")
        elif have != want and have != "auto":
            out.append(f"{prefix}{key} is {have!r} there but {want!r} from the run config")
    return out


def resolve_ds_config(cfg: RunConfig, world_size: int) -> dict:
    """The full DeepSpeed config for this run; raises ValueError naming the JSON file on any conflict."""
    given: dict = {}
    where = "the default ZeRO-2 config"
    if cfg.deepspeed is not None:
        where = str(cfg.deepspeed)
        try:
            given = json.loads(Path(cfg.deepspeed).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc})") from None
    derived = _derived(cfg, world_size)
    conflicts = _conflicts(given, derived)
    if conflicts:
        raise ValueError(f"{where}: {conflicts[0]} (set it in the run config, or remove it from the JSON)")
    for key in ("optimizer", "scheduler"):
        if key in given:
            raise ValueError(f"{where}: '{key}' is set by the run config (optim.*); remove it from the JSON")
    resolved = {**given, **{k: v for k, v in derived.items() if k not in ("bf16", "fp16")}}
    for key in ("bf16", "fp16"):
        resolved[key] = {**given.get(key, {}), **derived[key]}
    resolved.setdefault("zero_optimization", dict(DEFAULT_ZERO))
    resolved.setdefault("steps_per_print", 10**9)  # progress goes through our own logger
    resolved.setdefault("wall_clock_breakdown", False)
    return resolved


def zero_stage(ds_config: dict) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def offloads_optimizer(ds_config: dict) -> bool:
    device = ds_config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    return device not in (None, "none")
