"""Shared test helpers: a tiny random-init Llama and modality maps with every kind of position."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pipeline.adapters import adapter_parameters
from pipeline.modality import Modality

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


def run_two_ranks(script: str, out: Path, *args: str) -> dict:
    """Run `script` (beside this file) on 2 CPU ranks with torchrun on a free port; return the json it writes to out."""
    with socket.socket() as sock:  # a free port: other 2-rank tests may run on this machine at the same time
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(Path(__file__).with_name(script)), *args, str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(Path(out).read_text())


def leave() -> NoReturn:
    """End a 2-rank script the way launch/train.py ends a run: flushed, without interpreter finalization (where gloo's
    surviving worker threads can abort a finished process: see `pipeline.train.loop.close_distributed`)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
