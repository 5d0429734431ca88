"""Packing benchmark: useful tokens/s of pad, group and pack batching on the same samples, their padding fractions,
and the peak memory of the chunked loss against the plain full-logits loss at a large vocabulary.

    python benchmarks/packing.py [--clock wall|cpu|user] [--trials 3] [--samples 128] [--batch 16] [--max-tokens 4096]
        [--frame-tokens 144] [--audio-tokens 320] [--json PATH]

Length mix (stated; tokens after media expansion, as the product's Llama-2 + CLIP-L/336 + Whisper-large-v3 recipe
`configs/stage2/llama2_clip_whisper_*.yaml` expands them): text of every sample LLaVA-Instruct-like, log-normal with
median 120 tokens (sigma 0.8, clipped to [16, 1024]); 30% text-only; 40% one image (144 tokens: 24 x 24 patches
pooled 2x2); 30% an 8-frame video (8 x 144 tokens) with its audio (10 one-second windows x 32 Q-Former queries: the
recipe's cap, which the 10 s AVE and 60 s MUSIC-AVQA clips both reach), so a video sample is 1.5k to 2.5k tokens.
Micro-batches of 16 samples and packed rows of at most 4096 tokens are the recipe's `data.micro_batch_size` and
`data.max_tokens`. (`--frame-tokens 64 --audio-tokens 200 --batch 8 --max-tokens 2048 --samples 64` is the lighter
mix this benchmark used before 2026-12-02.)

The samples are `EncodedSample`s with random token ids (the LLM's cost does not depend on which ids, and towers are
not what this measures); the micro-batches are formed as the loader forms them (`window_batches`; group over windows
of 4 micro-batches) and collated by `AVProcessor.collate` / `AVProcessor.pack`; each is trained (forward and backward,
chunked loss, LoRA on all linear layers) through `AVLLM.forward`, on a CPU-sized Llama (4 layers, width 256,
vocabulary 8k). Useful tokens are the non-pad ones (prompt + answer + media). Which samples share a packed row is the
product's plan (`pipeline.model.packing`): sdpa computes attention over a whole packed row under the block-diagonal
mask, and at width 256 a row's attention costs as much as its linear layers at about 1.4k tokens, so the planner cuts
a micro-batch into more, shorter rows where that is cheaper, padding at most 5% where a plan can (the [rows, length]
shape of each batch is in the json).

Each mode is timed as the sum over its micro-batches of each one's best time (forward and backward) in --trials
passes: other jobs on a shared machine only slow a micro-batch down, and the three modes take turns within each pass
so that a load that drifts over minutes does not favour one; `--clock cpu` times the process's CPU seconds instead of
the wall clock (with OMP_NUM_THREADS=1 that is the work a pass does, which other jobs on a shared machine barely
change); `--clock user` its user-mode CPU seconds only. The difference is the kernel's: glibc hands the large
activations of a padded micro-batch back to the kernel and page-faults them in again on the next, which a GPU's
caching allocator never does (on this mix the padded pass spends about 30 s of 180 there, the packed one about 1 s),
so `user` is the figure closest to what a GPU user sees.

Memory: in a fresh subprocess each, the plain loss (LM head over every position, then transformers'
`ForCausalLMLoss`) and the chunked loss (`pipeline.model.loss.chunked_lm_loss`, chunks of `train.loss_chunk_tokens`)
run forward and backward on 4096 positions (1024 of them labelled) at a 152k vocabulary and width 256; the figure is
the growth of the process's peak RSS over its RSS just before the loss.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pipeline.adapters import AdapterConfig, attach, mark_trainable
from pipeline.data.stream import window_batches
from pipeline.model.avllm import AVLLM
from pipeline.model.config import ModelConfig
from pipeline.model.processor import IGNORE_INDEX, AVProcessor, EncodedSample
from pipeline.testing.tiny import write_tiny
from pipeline.train.config import TrainConfig

GROUP_BATCHES = 4  # data.group_batches
IMAGE_TOKENS, FRAMES = 144, 8  # one CLIP-L/336 image pooled 2x2; model.num_frames
MODES = ("pad", "group", "pack")
VOCAB_MEMORY, WIDTH_MEMORY, TOKENS_MEMORY, LABELS_MEMORY = 152_064, 256, 4096, 1024


def length_mix(n: int, seed: int, frame_tokens: int, audio_tokens: int) -> list[tuple[str, int, int]]:
    """(kind, prompt tokens, answer tokens) of n samples drawn from the stated mix."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        kind = rng.choice(["text", "image", "video"], p=[0.3, 0.4, 0.3])
        text = int(np.clip(rng.lognormal(np.log(120), 0.8), 16, 1024))
        media = {"text": 0, "image": IMAGE_TOKENS, "video": FRAMES * frame_tokens + audio_tokens}[kind]
        answer = max(4, text // 3)
        out.append((str(kind), text - answer + media, answer))
    return out


class Marker:
    """Stands for a sample's media in `group_key` (present / absent); no media values are spliced here."""


def encoded(mix: list[tuple[str, int, int]], vocab: int, media: set[int], seed: int) -> list[EncodedSample]:
    """Random token ids (never a media placeholder id: no media values are spliced here)."""
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for kind, prompt, answer in mix:
        ids = [3 if t in media else t for t in torch.randint(3, vocab, (prompt + answer,), generator=gen).tolist()]
        labels = [IGNORE_INDEX] * prompt + ids[prompt:]
        sample = EncodedSample(ids, labels, [False] * len(ids), None, None, None)
        samples.append((sample, kind))
    return samples


def micro_batches(samples, batch: int, mode: str, max_tokens: int, processor: AVProcessor) -> list[dict]:
    """As the loader forms them: windows of 4 micro-batches for group, one micro-batch otherwise."""
    window = batch * (GROUP_BATCHES if mode == "group" else 1)
    samples = samples[: len(samples) // (batch * GROUP_BATCHES) * batch * GROUP_BATCHES]  # the same in every mode
    out = []
    rng = random.Random(0)
    for start in range(0, len(samples) - window + 1, window):
        items = samples[start : start + window]
        keyed = [_Keyed(s, kind) for s, kind in items]
        for part in window_batches(keyed, batch, mode == "group", rng):
            encoded_part = [k.sample for k in part]
            out.append(processor.pack(encoded_part, max_tokens) if mode == "pack" else processor.collate(encoded_part))
    return out


class _Keyed:
    """An encoded sample with media presence for `group_key` (images for an image, video and audio for a video)."""

    def __init__(self, sample: EncodedSample, kind: str) -> None:
        self.sample, self.input_ids = sample, sample.input_ids
        self.images = Marker() if kind == "image" else None
        self.video = self.audio = Marker() if kind == "video" else None


def useful_and_total(batch: dict) -> tuple[int, int]:
    if "segment_ids" in batch:
        return int((batch["segment_ids"] >= 0).sum()), batch["segment_ids"].numel()
    return int(batch["attention_mask"].sum()), batch["attention_mask"].numel()


def build_model(vocab: int) -> AVLLM:
    """A CPU-sized Llama inside the real AVLLM (the tiny tokenizer, no towers) with LoRA on the LLM's linear layers."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        attn_implementation="sdpa",
    )
    with tempfile.TemporaryDirectory() as tmp:
        write_tiny(Path(tmp), "llama")
        model = AVLLM(ModelConfig(llm=Path(tmp) / "llm"), llm=LlamaForCausalLM(cfg))
    attach(model, AdapterConfig(name="lora", rank=8, scope=["llm"]))
    mark_trainable(model)
    return model.train()


CLOCKS = {
    "wall": time.perf_counter,
    "cpu": time.process_time,
    "user": lambda: resource.getrusage(resource.RUSAGE_SELF).ru_utime,
}


def time_batches(model, batches: list[dict], chunk: int, clock: str) -> list[float]:
    """Seconds of each micro-batch's forward and backward, in one pass."""
    times = []
    for batch in batches:
        start = CLOCKS[clock]()
        model(**batch, loss_chunk_tokens=chunk).loss.backward()
        times.append(CLOCKS[clock]() - start)
    model.zero_grad(set_to_none=True)
    return times


def status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status: VmRSS now, or VmHWM, the peak of this process image
    alone (getrusage's ru_maxrss would also count the parent's peak, which a vforked child inherits)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:"))


def memory_probe(kind: str) -> None:
    """Run in a subprocess: peak RSS growth (KiB) of one loss forward + backward; prints it."""
    from torch import nn
    from transformers.loss.loss_utils import ForCausalLMLoss

    from pipeline.model.loss import chunked_lm_loss, head_logits

    torch.set_num_threads(1)
    torch.manual_seed(0)
    head = nn.Linear(WIDTH_MEMORY, VOCAB_MEMORY, bias=False).requires_grad_(False)
    hidden = torch.randn(1, TOKENS_MEMORY, WIDTH_MEMORY, requires_grad=True)
    targets = torch.full((1, TOKENS_MEMORY), IGNORE_INDEX)
    targets[0, -LABELS_MEMORY:] = torch.randint(0, VOCAB_MEMORY, (LABELS_MEMORY,))
    config = type("Config", (), {})()
    base = status_kib("VmRSS")
    if kind == "plain":
        loss = ForCausalLMLoss(head_logits(head, hidden, config), None, VOCAB_MEMORY, shift_labels=targets)
    else:
        loss = chunked_lm_loss(hidden, head, targets, config, TrainConfig().loss_chunk_tokens)
    loss.backward()
    print(status_kib("VmHWM") - base)


def peak_memory(kind: str) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, __file__, "--memory-probe", kind], env=env, capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16, help="data.micro_batch_size")
    parser.add_argument("--max-tokens", type=int, default=4096, help="data.max_tokens for pack")
    parser.add_argument("--frame-tokens", type=int, default=144, help="tokens per video frame")
    parser.add_argument("--audio-tokens", type=int, default=320, help="tokens of a video's audio")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument(
        "--clock",
        choices=list(CLOCKS),
        default="wall",
        help="wall: seconds on the wall clock; cpu: this process's CPU seconds (with one thread, the work done: "
        "what to compare on a machine other jobs share); user: its user-mode CPU seconds (without the kernel's "
        "page faults, which a GPU's caching allocator does not pay)",
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--memory-probe", choices=["plain", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        memory_probe(args.memory_probe)
        return {}
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 1)))
    model = build_model(args.vocab)
    processor = model.build_processor()
    mix = length_mix(args.samples, 0, args.frame_tokens, args.audio_tokens)
    samples = encoded(mix, args.vocab, set(processor.token_ids.values()), seed=0)
    chunk = TrainConfig().loss_chunk_tokens
    modes = {mode: micro_batches(samples, args.batch, mode, args.max_tokens, processor) for mode in MODES}
    best = {mode: [float("inf")] * len(batches) for mode, batches in modes.items()}
    for _ in range(args.trials):  # the modes in turn within a trial: a shared machine's load drifts over minutes
        for mode, batches in modes.items():
            best[mode] = list(map(min, best[mode], time_batches(model, batches, chunk, args.clock)))
    seconds = {mode: sum(times) for mode, times in best.items()}
    rows = {}
    for mode, batches in modes.items():
        useful = sum(useful_and_total(b)[0] for b in batches)
        total = sum(useful_and_total(b)[1] for b in batches)
        rows[mode] = {
            "useful_tokens_per_s": useful / seconds[mode],
            "pad_fraction": 1 - useful / total,
            "seconds": seconds[mode],
            "useful_tokens": useful,
            "batches": len(batches),
            "shapes": [list(b["input_ids"].shape) for b in batches],
        }
    plain, chunked = peak_memory("plain"), peak_memory("chunked")
    result = {
        "pack_over_pad": rows["pack"]["useful_tokens_per_s"] / rows["pad"]["useful_tokens_per_s"],
        "group_over_pad": rows["group"]["useful_tokens_per_s"] / rows["pad"]["useful_tokens_per_s"],
        "pad_fraction_pack": rows["pack"]["pad_fraction"],
        "pad_fraction_pad": rows["pad"]["pad_fraction"],
        "chunked_loss_memory_ratio": chunked / plain,
        "modes": rows,
        "loss_peak_rss_mib": {"plain": plain / 1024, "chunked": chunked / 1024},
        "clock": args.clock,
        "load_average": os.getloadavg()[0],
    }
    print("| mode | useful tokens/s | x pad | padding | batches |\n|---|---|---|---|---|")
    for mode, row in rows.items():
        ratio = row["useful_tokens_per_s"] / rows["pad"]["useful_tokens_per_s"]
        print(
            f"| {mode} | {row['useful_tokens_per_s']:.0f} | {ratio:.2f} | {row['pad_fraction']:.1%} | "
            f"{row['batches']} |"
        )
    print(
        f"loss peak RSS growth at vocab {VOCAB_MEMORY}, {TOKENS_MEMORY} positions ({LABELS_MEMORY} labelled): "
        f"plain {plain / 1024:.0f} MiB, chunked {chunked / 1024:.0f} MiB (ratio {chunked / plain:.2f}); "
        f"load average {result['load_average']:.1f}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
