"""Shared test helpers: a tiny random-init Llama and modality maps with every kind of position."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pipeline.adapters import adapter_parameters
from pipeline.model.modality import Modality

VOCAB = 256


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, attn_implementation="eager")
    return LlamaForCausalLM(cfg).float()


def modality_ids(batch: int, seq: int, seed: int = 0, pad: bool = True) -> torch.Tensor:
    """Each sample: a visual span, an audio span, text, and (optionally) right padding; the last sample is text-only
    so that MAAC's 'samples with both kinds' rule is exercised."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.full((batch, seq), int(Modality.TEXT))
    for b in range(batch - 1):
        start = int(torch.randint(0, seq // 4, (1,), generator=gen))
        ids[b, start : start + seq // 4] = int(Modality.VISUAL)
        ids[b, start + seq // 4 : start + seq // 4 + seq // 8] = int(Modality.AUDIO)
    if pad:
        ids[0, -3:] = int(Modality.PAD)
    return ids


def randomize_adapters(model: torch.nn.Module, seed: int = 1) -> None:
    """Give every adapter parameter a non-trivial value (B is zero at init, which would hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter_parameters(model).values():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
