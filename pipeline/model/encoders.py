"""Frozen modality encoders loaded from local checkpoints, behind one small interface.

A tower maps a batch of inputs to token features: `VisionTower(pixel_values [N,3,H,W]) -> [N, P, D]` (patch tokens
of one image or video frame) and `AudioTower(features [N, ...]) -> [N, T, D]` (tokens of one fixed-length audio
window). Each tower knows how many tokens it yields per item and builds its own preprocessor, so the batch builder
never special-cases an architecture. New audio encoders register in `AUDIO_TOWERS` (a config change, not a rewrite).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, CLIPVisionModel, SiglipVisionModel

VISION_CLASSES = {"clip": CLIPVisionModel, "clip_vision_model": CLIPVisionModel,
                  "siglip": SiglipVisionModel, "siglip_vision_model": SiglipVisionModel}


def load_safetensors_prefix(path: Path, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Read only the tensors under the first of `prefixes` found in a (possibly sharded) safetensors checkpoint.

    Used to take an encoder out of a full encoder-decoder checkpoint (Whisper) without materialising the rest.
    """
    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    if not (path / files[0]).exists():
        raise FileNotFoundError(f"{path}: no model.safetensors (or index) found; weights must be in safetensors format")
    names: dict[str, str] = {}
    for file in files:
        with safe_open(path / file, framework="pt") as f:
            for key in f.keys():
                names[key] = file
    prefix = next((p for p in prefixes if any(k.startswith(p) for k in names)), None)
    if prefix is None:
        raise ValueError(f"{path}: no weights under any of the prefixes {prefixes}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(path / file, framework="pt") as f:
            for key in f.keys():
                if key.startswith(prefix):
                    state[key[len(prefix):]] = f.get_tensor(key)
    return state


class VisionTower(nn.Module):
    """CLIP or SigLIP vision encoder; patch tokens from a chosen hidden layer (CLS dropped), optional 2-D pooling."""

    def __init__(self, path: Path, feature_layer: int = -2, pool: int = 1, dtype: torch.dtype = torch.float32):
        super().__init__()
        config = AutoConfig.from_pretrained(path)
        cls = VISION_CLASSES.get(config.model_type)
        if cls is None:
            raise ValueError(f"{path}: vision encoder type '{config.model_type}' is not supported "
                             f"(supported: {', '.join(sorted(VISION_CLASSES))})")
        self.encoder = cls.from_pretrained(path, dtype=dtype)
        self.path = Path(path)
        self.feature_layer = feature_layer
        self.pool = pool
        vcfg = self.encoder.config
        self.has_cls = vcfg.model_type.startswith("clip")
        self.grid = vcfg.image_size // vcfg.patch_size
        if self.grid % pool:
            raise ValueError(f"model.vision_pool={pool} must divide the patch grid {self.grid}")
        self.hidden_size = vcfg.hidden_size
        self.tokens_per_item = (self.grid // pool) ** 2

    def build_preprocessor(self):
        return AutoImageProcessor.from_pretrained(self.path, backend="pil")

    def dummy_input(self) -> torch.Tensor:
        size = self.encoder.config.image_size
        return torch.zeros(1, 3, size, size, dtype=self.encoder.dtype)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.encoder(pixel_values=pixel_values.to(self.encoder.dtype), output_hidden_states=True)
        feats = out.hidden_states[self.feature_layer]
        if self.has_cls:
            feats = feats[:, 1:]
        if self.pool > 1:
            n, _, d = feats.shape
            grid = feats.transpose(1, 2).reshape(n, d, self.grid, self.grid)
            feats = F.avg_pool2d(grid, self.pool).flatten(2).transpose(1, 2)
        return feats


class WhisperAudioTower(nn.Module):
    """The Whisper encoder on short fixed windows.

    Whisper is trained on 30 s inputs; for shorter windows (MokA uses 1-2 s) the positional table is cut to the
    window's length (the first positions, as whisper.cpp's `audio_ctx` does), so a window costs its own length
    rather than 30 s of padding.
    """

    def __init__(self, path: Path, window_seconds: float, pool: int = 1, dtype: torch.dtype = torch.float32):
        super().__init__()
        from transformers import WhisperFeatureExtractor
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        self.path = Path(path)
        config = AutoConfig.from_pretrained(path)
        fe = WhisperFeatureExtractor.from_pretrained(path)
        frames = int(round(window_seconds * fe.sampling_rate)) // fe.hop_length
        if frames % 2 or frames // 2 > config.max_source_positions:
            raise ValueError(f"model.audio_window_seconds={window_seconds} gives {frames} mel frames; it must be even "
                             f"and at most {2 * config.max_source_positions} for {path}")
        state = load_safetensors_prefix(self.path, ("model.encoder.", "encoder.", ""))
        positions = frames // 2
        state["embed_positions.weight"] = state["embed_positions.weight"][:positions]
        config.max_source_positions = positions
        self.encoder = WhisperEncoder(config)
        self.encoder.load_state_dict(state, strict=True)
        self.encoder.to(dtype)
        self.window_seconds = window_seconds
        self.sampling_rate = fe.sampling_rate
        self.pool = pool
        if positions % pool:
            raise ValueError(f"model.audio_pool={pool} must divide the {positions} tokens of one audio window")
        self.hidden_size = config.d_model
        self.tokens_per_item = positions // pool

    def build_preprocessor(self):
        from transformers import WhisperFeatureExtractor

        fe = WhisperFeatureExtractor.from_pretrained(self.path)
        fe.chunk_length = self.window_seconds
        fe.n_samples = int(round(self.window_seconds * fe.sampling_rate))
        fe.nb_max_frames = fe.n_samples // fe.hop_length
        return fe

    def dummy_input(self) -> torch.Tensor:
        config = self.encoder.config
        return torch.zeros(1, config.num_mel_bins, 2 * config.max_source_positions, dtype=self.encoder.dtype)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(features.to(self.encoder.dtype)).last_hidden_state
        if self.pool > 1:
            feats = F.avg_pool1d(feats.transpose(1, 2), self.pool).transpose(1, 2)
        return feats


class ASTAudioTower(nn.Module):
    """The Audio Spectrogram Transformer (AST) on fixed windows of the checkpoint's own length.

    AST's positional table is learned for `max_length` frames (10 ms hop; AudioSet checkpoints: 1024 = 10.24 s), so
    `model.audio_window_seconds` must be max_length / 100. Its two leading [CLS]/distillation tokens are dropped.
    """

    def __init__(self, path: Path, window_seconds: float, pool: int = 1, dtype: torch.dtype = torch.float32):
        super().__init__()
        from transformers import ASTModel

        self.path = Path(path)
        self.encoder = ASTModel.from_pretrained(path, dtype=dtype)
        config = self.encoder.config
        if round(window_seconds * 100) != config.max_length:
            raise ValueError(f"model.audio_window_seconds={window_seconds} must be {config.max_length / 100} for the "
                             f"AST checkpoint {path} (max_length {config.max_length} frames of 10 ms)")
        self.window_seconds = window_seconds
        self.pool = pool
        freq, time = self.encoder.embeddings.get_shape(config)
        if (freq * time) % pool:
            raise ValueError(f"model.audio_pool={pool} must divide the {freq * time} tokens of one AST window")
        self.hidden_size = config.hidden_size
        self.tokens_per_item = freq * time // pool

    def build_preprocessor(self):
        from transformers import ASTFeatureExtractor

        return ASTFeatureExtractor.from_pretrained(self.path)

    def dummy_input(self) -> torch.Tensor:
        config = self.encoder.config
        return torch.zeros(1, config.max_length, config.num_mel_bins, dtype=self.encoder.dtype)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(features.to(self.encoder.dtype)).last_hidden_state[:, 2:]
        if self.pool > 1:
            feats = F.avg_pool1d(feats.transpose(1, 2), self.pool).transpose(1, 2)
        return feats


AUDIO_TOWERS = {"whisper": WhisperAudioTower, "audio-spectrogram-transformer": ASTAudioTower}


def load_audio_tower(path: Path, window_seconds: float, pool: int = 1, dtype: torch.dtype = torch.float32) -> nn.Module:
    model_type = AutoConfig.from_pretrained(path).model_type
    cls = AUDIO_TOWERS.get(model_type)
    if cls is None:
        raise ValueError(f"{path}: audio encoder type '{model_type}' is not supported "
                         f"(registered: {', '.join(sorted(AUDIO_TOWERS))})")
    return cls(path, window_seconds=window_seconds, pool=pool, dtype=dtype)
