"""Frozen modality encoders loaded from local checkpoints, behind one small interface (`Tower`).

A tower maps a batch of inputs to token features: a vision tower `pixel_values [N,3,H,W] -> [N, P, D]` (patch tokens
of one image or video frame), an audio tower `features [N, ...] -> [N, T, D]` (tokens of one fixed-length audio
window). Each tower knows how many tokens it yields per item, its input sample rate, a dummy input, and builds its own
preprocessor, so the model and the batch builder never special-case an architecture. A new encoder is one class
registered for its checkpoint's `model_type` with `@tower(...)`; `load_tower` picks it from the checkpoint's config.
With `weights=False` a tower is built from its config on the meta device (shapes only, nothing read but configs), for
planning memory.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import torch
import torch.nn.functional as F
from accelerate import init_empty_weights
from huggingface_hub import save_torch_state_dict
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, CLIPVisionModel, PreTrainedModel, SiglipVisionModel

from pipeline.media import SAMPLE_RATE
from pipeline.model.config import ModelConfig

Kind = Literal["vision", "audio"]


class Tower(Protocol):
    """What the composed model and the processor need from a modality encoder."""

    encoder: nn.Module  # the checkpoint's model (its parameter names are the saved ones)
    hidden_size: int  # width of one token feature
    tokens_per_item: int  # tokens per image / video frame, or per audio window
    sample_rate: int  # audio: the waveform rate its preprocessor takes (vision: SAMPLE_RATE)

    def build_preprocessor(self) -> Any: ...

    def dummy_input(self) -> torch.Tensor: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def save_pretrained(self, path: Path, max_shard_size: str) -> None: ...

    def __call__(self, values: torch.Tensor) -> torch.Tensor: ...


TOWERS: dict[Kind, dict[str, Callable[[Path, ModelConfig, bool], Tower]]] = {"vision": {}, "audio": {}}


def tower(kind: Kind, *model_types: str):
    """Class decorator: register a tower for checkpoints whose config has one of `model_types`."""

    def register(cls):
        for model_type in model_types:
            TOWERS[kind][model_type] = cls
        return cls

    return register


def load_tower(kind: Kind, path: Path, cfg: ModelConfig, weights: bool = True) -> Tower:
    """The registered tower for the checkpoint at `path` (by its `model_type`), built with the model settings;
    `weights=False`: on the meta device, from the config alone."""
    model_type = AutoConfig.from_pretrained(path).model_type
    cls = TOWERS[kind].get(model_type)
    if cls is None:
        raise ValueError(
            f"{path}: {kind} encoder type '{model_type}' is not supported "
            f"(supported: {', '.join(sorted(TOWERS[kind]))})"
        )
    return cls(path, cfg, weights)


def pretrained(cls: type[PreTrainedModel], path: Path, dtype: torch.dtype, weights: bool) -> PreTrainedModel:
    """`cls.from_pretrained(path)`, or with `weights=False` the same model built from its config on the meta device."""
    if weights:
        return cls.from_pretrained(path, dtype=dtype)
    if cls.config_class is None:
        raise TypeError(f"{cls.__name__} names no config class")
    with init_empty_weights():
        model = cls(cls.config_class.from_pretrained(path))
    return cast(PreTrainedModel, cast(nn.Module, model).to(dtype))


def load_safetensors_prefix(path: Path, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Read only the tensors under the first of `prefixes` found in a (possibly sharded) safetensors checkpoint.

    Used to take an encoder out of a full encoder-decoder checkpoint (Whisper) without materialising the rest.
    """
    index = path / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    )
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
                    state[key[len(prefix) :]] = f.get_tensor(key)
    return state


class _SavedTower(nn.Module):
    """Saving: the encoder's weights and config, and its preprocessor, as a checkpoint directory."""

    encoder: PreTrainedModel

    def build_preprocessor(self) -> Any:
        raise NotImplementedError

    def save_pretrained(self, path: Path, max_shard_size: str) -> None:
        self.encoder.save_pretrained(path, max_shard_size=max_shard_size)
        self.build_preprocessor().save_pretrained(path)


@tower("vision", "clip", "clip_vision_model", "siglip", "siglip_vision_model")
class VisionTower(_SavedTower):
    """CLIP or SigLIP vision encoder; patch tokens from a chosen hidden layer (CLS dropped), optional 2-D pooling."""

    sample_rate = SAMPLE_RATE

    def __init__(self, path: Path, cfg: ModelConfig, weights: bool = True):
        super().__init__()
        model_type = AutoConfig.from_pretrained(path).model_type
        cls = SiglipVisionModel if model_type.startswith("siglip") else CLIPVisionModel
        self.encoder = pretrained(cls, path, cfg.torch_dtype, weights)
        self.path = Path(path)
        self.feature_layer = cfg.vision_feature_layer
        pool = self.pool = cfg.vision_pool
        vcfg: Any = self.encoder.config  # transformers' configs type their fields loosely
        self.has_cls = vcfg.model_type.startswith("clip")
        self.grid = vcfg.image_size // vcfg.patch_size
        if self.grid % pool:
            raise ValueError(
                f"model.vision_pool={pool} must divide the {self.grid}x{self.grid} patch grid of {path} (its "
                f"divisors: {', '.join(str(d) for d in range(1, self.grid + 1) if self.grid % d == 0)})"
            )
        self.hidden_size = vcfg.hidden_size
        self.tokens_per_item = (self.grid // pool) ** 2

    def build_preprocessor(self):
        return AutoImageProcessor.from_pretrained(self.path, backend="pil")

    def dummy_input(self) -> torch.Tensor:
        size = self.grid * self.encoder.config.patch_size
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


@tower("audio", "whisper")
class WhisperAudioTower(_SavedTower):
    """The Whisper encoder on short fixed windows.

    Whisper is trained on 30 s inputs; for shorter windows (MokA uses 1-2 s) the positional table is cut to the
    window's length (the first positions, as whisper.cpp's `audio_ctx` does), so a window costs its own length
    rather than 30 s of padding. The rows cut off are kept aside (a buffer outside the state dict, never trained) and
    `save_pretrained` writes the encoder with its whole table and the checkpoint's own configuration and feature
    extractor, so a saved (merged) encoder loads with any window, as its base does.
    """

    spare_positions: torch.Tensor  # the checkpoint's positional rows past the training window (saved back)

    def __init__(self, path: Path, cfg: ModelConfig, weights: bool = True):
        super().__init__()
        from transformers import WhisperFeatureExtractor
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        window_seconds, pool, dtype = cfg.audio_window_seconds, cfg.audio_pool, cfg.torch_dtype
        self.path = Path(path)
        config = AutoConfig.from_pretrained(path)
        fe = WhisperFeatureExtractor.from_pretrained(path)
        frames = int(round(window_seconds * fe.sampling_rate)) // fe.hop_length
        if frames % 2 or frames // 2 > config.max_source_positions:
            raise ValueError(
                f"model.audio_window_seconds={window_seconds} gives {frames} mel frames; it must be even "
                f"and at most {2 * config.max_source_positions} for {path}"
            )
        positions = frames // 2
        self.source_config = copy.deepcopy(config)
        config.max_source_positions = positions
        if weights:
            state = load_safetensors_prefix(self.path, ("model.encoder.", "encoder.", ""))
            table = state["embed_positions.weight"]
            state["embed_positions.weight"] = table[:positions]
            self.encoder = WhisperEncoder(config)
            self.encoder.load_state_dict(state, strict=True)
            spare = table[positions:]
        else:
            with init_empty_weights():
                self.encoder = WhisperEncoder(config)
            spare = torch.empty(self.source_config.max_source_positions - positions, config.d_model, device="meta")
        cast(nn.Module, self.encoder).to(dtype)  # transformers types its own `to` too narrowly for mypy
        self.register_buffer("spare_positions", spare.to(dtype), persistent=False)
        self.window_seconds = window_seconds
        self.sample_rate = fe.sampling_rate
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

    def save_pretrained(self, path: Path, max_shard_size: str) -> None:
        """The encoder as its checkpoint has it: the whole positional table, the source config and feature extractor
        (the window is a setting of the model that loads it, `model.audio_window_seconds`)."""
        from transformers import WhisperFeatureExtractor

        state = {k: v.contiguous() for k, v in self.encoder.state_dict().items()}
        table = state["embed_positions.weight"]
        state["embed_positions.weight"] = torch.cat([table, self.spare_positions.to(table.device, table.dtype)])
        config = copy.deepcopy(self.source_config)
        config.dtype = table.dtype
        path.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(path)
        save_torch_state_dict(state, path, max_shard_size=max_shard_size)
        WhisperFeatureExtractor.from_pretrained(self.path).save_pretrained(path)

    def dummy_input(self) -> torch.Tensor:
        config = self.encoder.config
        return torch.zeros(1, config.num_mel_bins, 2 * config.max_source_positions, dtype=self.encoder.dtype)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(features.to(self.encoder.dtype)).last_hidden_state
        if self.pool > 1:
            feats = F.avg_pool1d(feats.transpose(1, 2), self.pool).transpose(1, 2)
        return feats


@tower("audio", "audio-spectrogram-transformer")
class ASTAudioTower(_SavedTower):
    """The Audio Spectrogram Transformer (AST) on fixed windows of the checkpoint's own length.

    AST's positional table is learned for `max_length` frames (10 ms hop; AudioSet checkpoints: 1024 = 10.24 s), so
    `model.audio_window_seconds` must be max_length / 100. Its two leading [CLS]/distillation tokens are dropped.
    """

    def __init__(self, path: Path, cfg: ModelConfig, weights: bool = True):
        super().__init__()
        from transformers import ASTFeatureExtractor, ASTModel

        window_seconds, pool = cfg.audio_window_seconds, cfg.audio_pool
        self.path = Path(path)
        self.encoder = pretrained(ASTModel, path, cfg.torch_dtype, weights)
        self.sample_rate = ASTFeatureExtractor.from_pretrained(path).sampling_rate
        config = self.encoder.config
        if round(window_seconds * 100) != config.max_length:
            raise ValueError(
                f"model.audio_window_seconds={window_seconds} must be {config.max_length / 100} for the "
                f"AST checkpoint {path} (max_length {config.max_length} frames of 10 ms)"
            )
        self.window_seconds = window_seconds
        self.pool = pool
        freq, time = cast(Any, self.encoder).embeddings.get_shape(config)
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
