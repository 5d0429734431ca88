"""Plan a run before queueing it: DeepSpeed's estimate of per-GPU and per-node CPU memory for the model states.

The model is instantiated on the meta device from its configs (no weights are read), so estimating a 7B model takes
seconds and no memory. DeepSpeed's "cold" estimators take the parameter counts; activations are not included.
"""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from pipeline.train.config import RunConfig
from pipeline.train.ds_config import zero_stage


def parameter_counts(cfg: RunConfig) -> tuple[int, int, int]:
    """(total parameters, trainable parameters, largest layer) of the composed model, counted on the meta device."""
    total = largest = 0
    with torch.device("meta"):
        parts = [AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(cfg.model.llm_dir))]
        for path in (cfg.model.vision, cfg.model.audio):
            if path is not None:
                parts.append(AutoModel.from_config(AutoConfig.from_pretrained(path)))
    for part in parts:
        for name, p in part.named_parameters():
            if part.config.model_type == "whisper" and not name.startswith("encoder."):
                continue  # only Whisper's encoder is loaded
            total += p.numel()
            largest = max(largest, p.numel())
    llm_cfg = parts[0].config.get_text_config()
    hidden, layers = llm_cfg.hidden_size, llm_cfg.num_hidden_layers
    inter = getattr(llm_cfg, "intermediate_size", 4 * hidden)
    kv = getattr(llm_cfg, "num_key_value_heads", None) or llm_cfg.num_attention_heads
    kv_dim = kv * (getattr(llm_cfg, "head_dim", None) or hidden // llm_cfg.num_attention_heads)
    r = cfg.adapter.rank
    # LoRA-sized estimate of the adapter on q,k,v,o,gate,up,down (A: r x in, B: out x r) + projectors (~2 x hidden^2)
    shapes = [
        (hidden, hidden),
        (hidden, kv_dim),
        (hidden, kv_dim),
        (hidden, hidden),
        (hidden, inter),
        (hidden, inter),
        (inter, hidden),
    ]
    trainable = layers * sum(r * (i + o) for i, o in shapes) + 2 * 2 * hidden * hidden
    return total, trainable, largest


def estimate(cfg: RunConfig, ds_config: dict, gpus_per_node: int, nodes: int) -> str:
    """DeepSpeed's memory table for the configured ZeRO stage (as text)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold

    total, trainable, largest = parameter_counts(cfg)
    stage = zero_stage(ds_config)
    out = io.StringIO()
    with redirect_stdout(out):
        if stage == 3:
            estimate_zero3_model_states_mem_needs_all_cold(
                total, largest, num_gpus_per_node=gpus_per_node, num_nodes=nodes
            )
        else:
            estimate_zero2_model_states_mem_needs_all_cold(total, num_gpus_per_node=gpus_per_node, num_nodes=nodes)
    gpus = gpus_per_node * nodes
    # mixed precision: 2 bytes per frozen parameter; 2 (weight) + 2 (grad) + 12 (fp32 master, Adam m and v) per
    # trainable one. ZeRO-3 partitions everything; ZeRO-1/2 replicate the weights and partition the rest.
    width = 4 if cfg.model.dtype == "fp32" else 2
    frozen_weights = width * total / (gpus if stage == 3 else 1)
    trainable_states = (width + 12) * trainable / gpus + (width * trainable / (gpus if stage >= 2 else 1))
    frozen = (frozen_weights + trainable_states) / 2**30
    head = (
        f"model: {total / 1e9:.2f}B parameters (largest layer {largest / 1e6:.1f}M); about "
        f"{trainable / 1e6:.1f}M trainable (adapter rank {cfg.adapter.rank} + projectors); ZeRO-{stage}, "
        f"{nodes} node(s) x {gpus_per_node} GPU(s)\n"
        f"frozen backbone ({cfg.model.dtype}): about {frozen:.2f} GB per GPU for model states, before activations\n"
        "DeepSpeed's estimate below assumes every parameter trains: an upper bound for the model states.\n"
    )
    return head + out.getvalue()
