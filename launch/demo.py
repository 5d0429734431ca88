"""The main job, in its first form: tiny components on disk -> AVLLM -> a few projector training steps on one mixed
synthetic batch (video+audio, image, audio, text) -> loss printed -> the model saved and reloaded.

    python -m launch.demo [--out runs/demo] [--steps 20] [--llm llama|qwen2|qwen3]

The full demo (shards, two DeepSpeed stages, IMoD, merge, eval) replaces this as those parts land.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import numpy as np
import torch
import yaml
from transformers.utils import logging as hf_logging

from pipeline.config import from_dict
from pipeline.model.avllm import AVLLM
from pipeline.model.config import ModelConfig
from pipeline.model.processor import AVSample
from pipeline.model.tiny import write_tiny


def synthetic_batch(rng: np.random.Generator) -> list[AVSample]:
    """A red frame sequence with three 1 kHz beeps, a blue image, a tone, and a text-only turn."""
    sr = 16000
    t = np.arange(2 * sr) / sr
    beeps = (np.sin(2 * np.pi * 1000 * t) * ((t % 0.6) < 0.2) * (t < 1.8)).astype(np.float32)
    red = np.zeros((8, 64, 64, 3), np.uint8)
    red[:, 16:48, 16:48, 0] = 255
    blue = np.zeros((64, 64, 3), np.uint8)
    blue[8:56, 8:56, 2] = 255
    return [
        AVSample([{"from": "human", "value": "<video>\n<audio>\nHow many beeps are there?"},
                  {"from": "gpt", "value": "three"}], video=red, audio=beeps),
        AVSample([{"from": "human", "value": "<image>\nWhat colour is the shape?"}, {"from": "gpt", "value": "blue"}],
                 images=[blue]),
        AVSample([{"from": "human", "value": "<audio>\nDescribe the audio."}, {"from": "gpt", "value": "A tone."}],
                 audio=(0.1 * rng.standard_normal(sr)).astype(np.float32)),
        AVSample([{"from": "human", "value": "Say yes."}, {"from": "gpt", "value": "yes"}]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--llm", default="llama", choices=["llama", "qwen2", "qwen3"])
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    out = Path(args.out)
    torch.manual_seed(0)
    start = time.time()

    model_yaml = write_tiny(out / "components", args.llm)
    cfg = from_dict(ModelConfig, yaml.safe_load(model_yaml.read_text())["model"], where=str(model_yaml))
    model = AVLLM.from_config(cfg)
    processor = model.build_processor()
    batch = processor(synthetic_batch(np.random.default_rng(0)))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    print(f"tiny {args.llm} AVLLM: {sum(p.numel() for p in trainable):,} trainable of "
          f"{sum(p.numel() for p in model.parameters()):,} parameters; batch {tuple(batch['input_ids'].shape)}")
    model.train()
    for step in range(1, args.steps + 1):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step == 1 or step == args.steps:
            print(f"step {step:3d}  loss {loss.item():.4f}")
    model.eval()
    model.save_pretrained(out / "model")
    reloaded = AVLLM.from_pretrained(out / "model").eval()
    with torch.no_grad():
        trained_loss, reloaded_loss = model(**batch).loss.item(), reloaded(**batch).loss.item()
    if trained_loss != reloaded_loss:
        raise SystemExit(f"reloaded model disagrees with the trained one: {reloaded_loss} != {trained_loss}")
    print(f"trained loss {trained_loss:.4f}; saved to {out / 'model'} and reloaded with the same loss; "
          f"{time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
