"""The `model` section of a run config: which checkpoints to compose and how."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.model.hub import local_dir, pin
from pipeline.model.projectors import PROJECTORS

LLM_REQUIRED = "model.llm: required (a transformers causal LM: a local directory or a Hub id org/name)"
CHECKPOINT_KEYS = ("llm", "vision", "audio", "tokenizer")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ModelConfig:
    # Checkpoints: each a local directory or a Hugging Face Hub id `org/name[@revision]` (pipeline/model/hub.py);
    # validation pins an id to `org/name@<commit>`, the snapshot the run uses.
    llm: str | None = None  # a transformers causal LM (Llama, Qwen2, Qwen3, ...)
    vision: str | None = None  # CLIP or SigLIP; None: no visual input
    audio: str | None = None  # Whisper (feature extractor beside it) or AST; None: no audio
    tokenizer: str | None = None  # defaults to the llm's
    vision_feature_layer: int = -2
    vision_pool: int = 1  # 2-D average pooling stride over the patch grid
    vision_projector: str = "mlp2x_gelu"
    num_frames: int = 8  # video frames sampled uniformly
    audio_window_seconds: float = 1.0
    audio_max_windows: int = 10
    audio_pool: int = 1  # 1-D average pooling stride over one window's tokens
    audio_projector: str = "mlp2x_gelu"
    qformer_queries: int = 32
    qformer_layers: int = 2
    dtype: str = "fp32"  # fp32 | bf16 | fp16: weights and compute
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2
    chat_template: str | None = None  # jinja template for tokenizers that ship none
    max_length: int = 2048  # longest tokenized sample after media expansion

    def validate(self) -> None:
        if self.llm is None:
            raise ValueError(LLM_REQUIRED)
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype: '{self.dtype}' is not one of {', '.join(DTYPES)}")
        for key in ("vision_projector", "audio_projector"):
            if getattr(self, key) not in PROJECTORS:
                raise ValueError(f"model.{key}: '{getattr(self, key)}' is not one of {', '.join(PROJECTORS)}")
        for key in ("num_frames", "audio_max_windows", "vision_pool", "audio_pool", "qformer_queries", "max_length"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key}: must be at least 1, got {getattr(self, key)}")
        if self.audio_window_seconds <= 0:
            raise ValueError(f"model.audio_window_seconds: must be positive, got {self.audio_window_seconds}")
        for key in CHECKPOINT_KEYS:  # last: it may read the Hub's cache or download
            setattr(self, key, pin(getattr(self, key), f"model.{key}"))

    @property
    def llm_dir(self) -> Path:
        """The directory holding the LLM's files (a pinned Hub id resolves from the cache)."""
        if self.llm is None:
            raise ValueError(LLM_REQUIRED)
        return local_dir(self.llm)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]
