"""Plan a run before queueing it: DeepSpeed's estimate of per-GPU and per-node CPU memory for the model states.

The model the run trains is built on the meta device (`AVLLM(..., weights=False)`, accelerate's `init_empty_weights`):
from the checkpoints' configs, tokenizer and feature extractor, no weight read or allocated. So it counts exactly
the modules the run loads (the vision tower, not CLIP's or SigLIP's text tower; Whisper's encoder cut to the window,
not its decoder), and the configured adapter is attached to it and the stage's trainable set selected as training
does, so the trainable count is the adapter's own (and the projectors'), whatever the method. Activations are not
included.
"""

from __future__ import annotations

import io
from contextlib import redirect_stdout

from pipeline.adapters import attach
from pipeline.model.avllm import AVLLM
from pipeline.train.config import RunConfig
from pipeline.train.ds_config import zero_stage
from pipeline.train.stages import select_trainables


def parameter_counts(cfg: RunConfig) -> tuple[int, int, int]:
    """(parameters, trainable parameters, largest tensor) of the model the run trains, counted on the meta device."""
    model = AVLLM(cfg.model, weights=False)
    if cfg.stage == 2:
        attach(model, cfg.adapter)
    trainable = select_trainables(model, cfg)
    sizes = [p.numel() for p in model.parameters()]
    return sum(sizes), trainable, max(sizes)


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
    trains = "the projectors" if cfg.stage == 1 else f"the {cfg.adapter.name} adapter + projectors"
    head = (
        f"model: {total / 1e9:.2f}B parameters (largest tensor {largest / 1e6:.1f}M); {trainable / 1e6:.2f}M "
        f"trainable ({trains}); ZeRO-{stage}, {nodes} node(s) x {gpus_per_node} GPU(s)\n"
        f"frozen backbone ({cfg.model.dtype}): about {frozen:.2f} GB per GPU for model states, before activations\n"
        "DeepSpeed's estimate below assumes every parameter trains: an upper bound for the model states.\n"
    )
    return head + out.getvalue()
