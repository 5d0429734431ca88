"""Other encoder checkpoints are a config change: SigLIP for vision, AST for audio."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from transformers import (
    ASTConfig,
    ASTFeatureExtractor,
    ASTModel,
    SiglipImageProcessor,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from pipeline.model.avllm import AVLLM
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
