"""Merge cost (wall time, peak RSS) and greedy latency of merged vs bare base vs unmerged adapter model (CPU).

Two sizes: the tiny test components, and a random-init Llama LLM built on the fly (default hidden 2048, 16 layers,
vocab 32000: 0.94B parameters, bf16 on disk) composed with the tiny towers. Each gets a LoRA (rank 8, every linear of
the LLM) with perturbed weights, written as a run directory; `launch/merge.py` then runs in a child process whose
ru_maxrss is the peak RSS of the merge. Latency: one fixed text prompt, a fixed number of new tokens
(min_new_tokens = max_new_tokens), the three models interleaved per round (rotating order), medians reported.

    python benchmarks/merge.py [--hidden 2048 --layers 16 --new-tokens 8 --rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM


from pipeline.adapters import AdapterConfig, attach, mark_trainable
from pipeline.config import load_config, save_config
from pipeline.model.avllm import AVLLM
from pipeline.model.config import ModelConfig
from pipeline.model.processor import AVSample
from pipeline.testing.tiny import write_tiny
from pipeline.rundir import load_trainables, write_trainables
from pipeline.train.config import RunConfig

@dataclasses.dataclass
class ModelOnly:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)


PROMPT = "How many beeps are there? Answer the question using a single word or phrase."


def big_llm(tiny_llm: Path, out: Path, hidden: int, layers: int, vocab: int) -> int:
    """A random-init Llama (bf16) with the tiny tokenizer beside it; returns its parameter count."""
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=int(hidden * 2.6875) // 256 * 256,
                      num_hidden_layers=layers, num_attention_heads=hidden // 128, num_key_value_heads=hidden // 128,
                      vocab_size=vocab, tie_word_embeddings=False, dtype="bfloat16")
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    model.to(torch.bfloat16).save_pretrained(out)
    for f in tiny_llm.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(f, out / f.name)
    return sum(p.numel() for p in model.parameters())


def make_run(model_cfg, run: Path) -> None:
    adapter = AdapterConfig(name="lora", rank=8, scope=["llm"])
    model = AVLLM.from_config(model_cfg)
    attach(model, adapter)
    mark_trainable(model, ["projectors.*"])
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_((0.02 * torch.randn(p.shape, generator=gen)).to(p.dtype))
    write_trainables(model, adapter, run / "final")
    save_config(RunConfig(output_dir=str(run), model=model_cfg, adapter=adapter), run / "config.yaml")


def timed_merge(run: Path, out: Path) -> tuple[float, float]:
    """(seconds, peak RSS MB) of `launch/merge.py` in a fresh child process (imports excluded from the seconds)."""
    # VmHWM, not ru_maxrss: Linux carries the forking parent's peak into the child's ru_maxrss across exec
    code = ("import re, sys, time; from pipeline.merge import merge_run; "
            "t = time.perf_counter(); merge_run(sys.argv[1], sys.argv[2]); s = time.perf_counter() - t; "
            "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
            "print(s, int(hwm) / 1024)")
    proc = subprocess.run([sys.executable, "-c", code, str(run), str(out)], capture_output=True,
                          text=True, check=True, env={"OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false",
                                                      **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"},
                                                      "PATH": "/usr/bin:/bin"})
    seconds, rss = proc.stdout.split()[-2:]
    return float(seconds), float(rss)


def latencies(models: dict[str, AVLLM], new_tokens: int, rounds: int) -> dict[str, float]:
    names = list(models)
    times: dict[str, list[float]] = {n: [] for n in names}
    batch = models[names[0]].build_processor()([AVSample([{"from": "human", "value": PROMPT}])], padding_side="left")
    for r in range(rounds + 1):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            models[name].generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
            if r:  # round 0 warms up
                times[name].append(time.perf_counter() - start)
    return {n: statistics.median(t) for n, t in times.items()}


def bench(label: str, model_cfg, root: Path, args) -> dict:
    run, out = root / f"run-{label}", root / f"merged-{label}"
    make_run(model_cfg, run)
    seconds, rss = timed_merge(run, out)
    size_mb = sum(f.stat().st_size for f in (out / "llm").glob("*.safetensors")) / 2**20
    base = AVLLM.from_config(model_cfg).eval()
    load_trainables(base, run / "final", prefixes=("projectors.",))
    unmerged = AVLLM.from_config(model_cfg).eval()
    load_trainables(unmerged, run / "final")
    merged = AVLLM.from_pretrained(out).eval()
    lat = latencies({"base": base, "merged": merged, "unmerged": unmerged}, args.new_tokens, args.rounds)
    return {"model": label, "llm_weights_mb": size_mb, "merge_seconds": seconds, "merge_peak_rss_mb": rss,
            "latency_base_s": lat["base"], "latency_merged_s": lat["merged"], "latency_unmerged_s": lat["unmerged"],
            "merged_over_base_latency": lat["merged"] / lat["base"],
            "unmerged_over_base_latency": lat["unmerged"] / lat["base"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        yaml_path = write_tiny(root / "tiny", "llama")
        tiny_cfg = load_config(ModelOnly, yaml_path).model
        n = big_llm(Path(tiny_cfg.llm), root / "big-llm", args.hidden, args.layers, args.vocab)
        big_cfg = load_config(ModelOnly, yaml_path, [f"model.llm={root / 'big-llm'}", "model.dtype=bf16"]).model
        rows = [bench("tiny", tiny_cfg, root, args), bench(f"{n / 1e9:.2f}B", big_cfg, root, args)]
    cols = ["model", "llm_weights_mb", "merge_seconds", "merge_peak_rss_mb", "latency_base_s", "latency_merged_s",
            "latency_unmerged_s", "merged_over_base_latency", "unmerged_over_base_latency"]
    print(" | ".join(cols))
    for row in rows:
        print(" | ".join(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in cols))
    if args.json:
        big = rows[-1]
        figures = {k: big[k] for k in ("merged_over_base_latency", "unmerged_over_base_latency", "merge_seconds",
                                       "merge_peak_rss_mb")}
        args.json.write_text(json.dumps({**figures, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
