"""Forward+backward step time of the adapters on a small-but-real Llama (CPU, fp32).

Every variant starts from the same random base weights and sees the same batch and the same modality map (a visual
span, an audio span, the rest text). Steps are interleaved across variants (one step of each per round, rotating
the order) so that drift of the machine hits all alike; the table reports medians.

    python benchmarks/adapters.py [--hidden 512 --layers 2 --seq 256 --batch 2 --steps 15] [--clock cpu] [--json PATH]
    python benchmarks/adapters.py --all ...    also BitFit and the Adapters II methods, with their unmerged
                                               inference latency relative to the bare base model

MoRA (in --all) needs a second tower for its Gram exchange and adapts square layers only (q_proj and o_proj under
grouped-query attention): it runs on the same Llama placed beside a `vision` tower of square q/o projections at the
same depth and width (`TwoTowers`), and `lora-qo` (LoRA on the same two projections) is its like-for-like reference.

`--clock cpu` times each step by the process's CPU time instead of wall time: on a shared machine the wall time of
a step includes the time other sessions held the core, the CPU time much less so.

The defaults are smaller than the issue's 8 layers x 512 tokens x batch 4: that size costs 4-5 s of CPU per step
(10-20 s of wall time on the loaded shared 2-core machine), minutes for an interleaved run of four variants. Per-layer shapes (hidden 512,
rank 8) are kept, and they decide the ratios.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM


from pipeline.adapters import AdapterConfig, attach
from pipeline.adapters.config import DEFAULT_TARGETS
from pipeline.modality import Modality, ModalityContext


CORE = ("lora", "dora", "imod")
EXTRA = ("bitfit", "unimodal_lora", "moka", "loramoe", "hydralora", "delo")
SQUARE = ["q_proj", "o_proj"]  # the square projections of a grouped-query-attention Llama: MoRA's targets


class TwoTowers(nn.Module):
    """The benchmark Llama as tower `llm` beside a `vision` tower of square q/o projections (same depth and width),
    whose S MoRA's Gram exchange reads. Only the LLM runs: the other tower's S enter the LLM's step through G_o, as
    in the composed model, while the encoder's own forward is the encoder's cost, which no other variant pays here."""

    def __init__(self, llm: nn.Module, layers: int, hidden: int):
        super().__init__()
        self.llm = llm
        self.vision = nn.ModuleDict({"layers": nn.ModuleList(
            nn.ModuleDict({"self_attn": nn.ModuleDict({n: nn.Linear(hidden, hidden) for n in SQUARE})})
            for _ in range(layers))})

    def forward(self, **kwargs):
        return self.llm(**kwargs)


def build_models(args) -> tuple[dict[str, torch.nn.Module], ModalityContext]:
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(
        hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3 // 64 * 64, num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64, num_key_value_heads=args.hidden // 128, vocab_size=args.vocab,
        max_position_embeddings=args.seq, attn_implementation="sdpa",
    ))
    base.requires_grad_(False)
    ctx = ModalityContext()
    models = {"peft-lora": get_peft_model(copy.deepcopy(base), LoraConfig(r=args.rank, lora_alpha=2 * args.rank,
                                                                          target_modules=DEFAULT_TARGETS))}
    variants = {name: (copy.deepcopy(base), {}) for name in CORE + (EXTRA if args.all else ())}
    if args.all:
        variants["lora-qo"] = (copy.deepcopy(base), {"name": "lora", "targets": SQUARE})
        variants["mora"] = (TwoTowers(copy.deepcopy(base), args.layers, args.hidden),
                            {"targets": SQUARE, "scope": ["llm", "vision"]})
    for name, (model, options) in variants.items():
        attach(model, AdapterConfig(**{"name": name, "rank": args.rank, "alpha": 2 * args.rank, **options}), ctx)
        models[name] = model
    for model in models.values():
        model.train()
    models["base"] = base  # inference reference only
    return models, ctx


def modality_map(batch: int, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A visual span, an audio span, the rest text; the last eighth is the question (MokA attends to it)."""
    ids = torch.full((batch, seq), int(Modality.TEXT))
    ids[:, 4 : 4 + seq // 4] = int(Modality.VISUAL)
    ids[:, 4 + seq // 4 : 4 + seq // 4 + seq // 8] = int(Modality.AUDIO)
    question = torch.zeros(batch, seq, dtype=torch.bool)
    question[:, -seq // 8 :] = True
    return ids, question


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def step(model: torch.nn.Module, tokens: torch.Tensor, clock: Callable[[], float] = time.perf_counter) -> float:
    model.zero_grad(set_to_none=True)
    start = clock()
    model(input_ids=tokens, labels=tokens).loss.backward()
    return clock() - start


@torch.no_grad()
def infer(model: torch.nn.Module, tokens: torch.Tensor, clock: Callable[[], float] = time.perf_counter) -> float:
    start = clock()
    model(input_ids=tokens)
    return clock() - start


def interleaved(models: dict[str, torch.nn.Module], run, steps: int) -> dict[str, float]:
    """Median time of `run(model)` per model: 2 warm-up rounds, then `steps` rounds in a rotating order."""
    names = list(models)
    times: dict[str, list[float]] = {n: [] for n in names}
    for round_ in range(steps + 2):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            elapsed = run(models[name])
            if round_ >= 2:
                times[name].append(elapsed)
    return {n: statistics.median(t) for n, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per variant (after 2 warm-up rounds)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=CLOCKS, default="wall", help="wall time or process CPU time per step")
    parser.add_argument("--all", action="store_true", help="also BitFit and the Adapters II methods")
    parser.add_argument("--json", type=Path, help="write the ratios here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    models, ctx = build_models(args)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    ctx.set(*modality_map(args.batch, args.seq))
    clock = CLOCKS[args.clock]
    trained = {n: m for n, m in models.items() if n != "base"}
    median = interleaved(trained, lambda m: step(m, tokens, clock), args.steps)
    ratios = {
        "imod_over_lora": median["imod"] / median["lora"],
        "lora_over_peft": median["lora"] / median["peft-lora"],
        "dora_over_lora": median["dora"] / median["lora"],
    }
    print(f"Llama hidden {args.hidden}, {args.layers} layers, batch {args.batch} x seq {args.seq}, rank {args.rank}, "
          f"fp32, {args.threads} threads, median {args.clock} time of {args.steps} interleaved steps\n")
    inference = {}
    if args.all:
        for model in models.values():
            model.eval()
        inference = interleaved(models, lambda m: infer(m, tokens, clock), args.steps)
        for name in EXTRA + ("lora-qo", "mora"):
            ratios[f"{name}_over_lora"] = median[name] / median["lora"]
        ratios["mora_over_lora-qo"] = median["mora"] / median["lora-qo"]
        for name in trained:
            ratios[f"{name}_inference_over_base"] = inference[name] / inference["base"]
    print("| adapter | median train step (ms) | vs our LoRA |" + (" inference vs base |" if inference else "")
          + "\n|---|---:|---:|" + ("---:|" if inference else ""))
    for name in trained:
        row = f"| {name} | {1000 * median[name]:.1f} | {median[name] / median['lora']:.3f} |"
        print(row + (f" {inference[name] / inference['base']:.3f} |" if inference else ""))
    print("\n| ratio | value | target |\n|---|---:|---:|")
    targets = {"imod_over_lora": "<= 1.05", "lora_over_peft": "<= 1.00"}
    for key in ("imod_over_lora", "lora_over_peft", "dora_over_lora") + (("mora_over_lora-qo",) if args.all else ()):
        print(f"| {key} | {ratios[key]:.3f} | {targets.get(key, '-')} |")
    if args.json:
        args.json.write_text(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()
