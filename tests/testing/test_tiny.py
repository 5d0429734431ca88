"""The tiny components load through stock transformers, like a user's real checkpoints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel, WhisperForConditionalGeneration

REPO = Path(__file__).resolve().parents[2]


def test_cli_writes_components_stock_transformers_loads(tmp_path):
    out = tmp_path / "tiny"
    subprocess.run([sys.executable, "-m", "pipeline.testing.tiny", "--out", str(out), "--llm", "qwen2"],
                   check=True, cwd=REPO, capture_output=True, timeout=120)
    model_cfg = yaml.safe_load((out / "model.yaml").read_text())["model"]
    assert Path(model_cfg["llm"]) == out / "llm"
    tokenizer = AutoTokenizer.from_pretrained(out / "llm")
    llm = AutoModelForCausalLM.from_pretrained(out / "llm")
    assert llm.config.model_type == "qwen2" and llm.config.vocab_size == len(tokenizer)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "How many beeps?"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n") and tokenizer.eos_token == "<|im_end|>"
    ids = tokenizer("What colour is the shape?", return_tensors="pt").input_ids
    assert tokenizer.decode(ids[0]) == "What colour is the shape?"
    assert torch.isfinite(llm(ids).logits).all()
    assert isinstance(CLIPVisionModel.from_pretrained(out / "vision"), CLIPVisionModel)
    assert WhisperForConditionalGeneration.from_pretrained(out / "audio").config.num_mel_bins == 80
