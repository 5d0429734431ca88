"""Other encoder checkpoints are a config change: SigLIP for vision, AST for audio."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from transformers import (
    ASTConfig,
    AutoConfig,
    ASTFeatureExtractor,
    ASTModel,
    SiglipImageProcessor,
    SiglipVisionConfig,
    SiglipVisionModel,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)

from pipeline.model.avllm import AVLLM
from pipeline.model.encoders import load_safetensors_prefix
from pipeline.model.processor import AVSample


@pytest.fixture(scope="module")
def other_encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    torch.manual_seed(0)
    SiglipVisionModel(SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, image_size=64, patch_size=16)).save_pretrained(root / "siglip")
    SiglipImageProcessor(size={"height": 64, "width": 64}).save_pretrained(root / "siglip")
    ASTModel(ASTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                       max_length=100, num_mel_bins=128)).save_pretrained(root / "ast")
    ASTFeatureExtractor(max_length=100).save_pretrained(root / "ast")
    return root


def test_siglip_and_ast_towers_compose_and_train(other_encoders, tiny_model_config):
    cfg = dataclasses.replace(tiny_model_config("llama"), vision=other_encoders / "siglip",
                              audio=other_encoders / "ast", audio_window_seconds=1.0)
    model = AVLLM.from_config(cfg)
    assert model.vision.tokens_per_item == 16            # 4 x 4 patches, SigLIP has no CLS to drop
    assert model.audio.tokens_per_item == 12 * 9         # AST patches of one 1 s window, CLS/distillation dropped
    rng = np.random.default_rng(0)
    sample = AVSample([{"from": "human", "value": "<video>\n<audio>\nHow many beeps?"}, {"from": "gpt", "value": "two"}],
                      video=rng.integers(0, 255, (4, 64, 64, 3), dtype=np.uint8),
                      audio=rng.standard_normal(20000).astype(np.float32))
    batch = model.build_processor()([sample])
    assert batch["audio_values"].shape == (2, 100, 128)  # two 1 s windows of 100 frames x 128 mel bins
    out = model(**batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(p.grad is not None for p in model.projectors.parameters())


def test_ast_window_must_match_the_checkpoint(other_encoders, tiny_model_config):
    cfg = dataclasses.replace(tiny_model_config("llama"), audio=other_encoders / "ast", audio_window_seconds=2.0)
    with pytest.raises(ValueError, match="audio_window_seconds=2.0 must be 1.0 for the AST checkpoint"):
        AVLLM.from_config(cfg)


def test_a_saved_whisper_encoder_keeps_its_whole_table_and_loads_with_another_window(tmp_path, tiny_model_config):
    """The model cuts the positional table to its 1 s window (50 positions); what it saves is the base encoder (100
    positions here), so the saved checkpoint loads with a 2 s window too, and gives the base model's features."""
    base = tmp_path / "whisper"
    whisper = WhisperForConditionalGeneration.from_pretrained(tiny_model_config("llama").audio)
    torch.nn.init.normal_(whisper.model.encoder.embed_positions.weight)  # the tiny stand-in's table is zero
    whisper.save_pretrained(base)
    WhisperFeatureExtractor.from_pretrained(tiny_model_config("llama").audio).save_pretrained(base)
    cfg = dataclasses.replace(tiny_model_config("llama"), audio=str(base))
    model = AVLLM.from_config(cfg)
    assert model.audio.encoder.config.max_source_positions == 50
    model.save_pretrained(tmp_path / "saved")

    saved = AutoConfig.from_pretrained(tmp_path / "saved" / "audio")
    assert saved.max_source_positions == 100 == whisper.config.max_source_positions
    assert WhisperFeatureExtractor.from_pretrained(tmp_path / "saved" / "audio").chunk_length == 30
    table = load_safetensors_prefix(tmp_path / "saved" / "audio", ("",))["embed_positions.weight"]
    torch.testing.assert_close(table, whisper.model.encoder.embed_positions.weight.detach(), rtol=0, atol=0)

    longer = AVLLM.from_pretrained(tmp_path / "saved", audio_window_seconds=2.0)
    direct = AVLLM.from_config(dataclasses.replace(cfg, audio_window_seconds=2.0))
    assert longer.audio.encoder.config.max_source_positions == 100 and longer.audio.tokens_per_item == 100
    features = torch.randn(1, 80, 200)
    with torch.no_grad():
        torch.testing.assert_close(longer.audio(features), direct.audio(features), rtol=0, atol=0)
