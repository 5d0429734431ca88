"""Bad input fails in one line, before any process group starts; the memory planner works from configs alone."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from transformers import AutoTokenizer, CLIPConfig, LlamaConfig, WhisperConfig, WhisperFeatureExtractor

from launch.train import main
from tests.train.conftest import REPO, common_overrides

STAGE1 = str(REPO / "configs/demo/stage1.yaml")
STAGE2 = str(REPO / "configs/demo/stage2.yaml")


def fails_with(capsys, argv: list[str], expected: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert expected in err, err
    assert not dist.is_initialized()


def test_missing_shards(capsys, train_data, tmp_path):
    args = common_overrides(train_data, tmp_path / "run", **{"data.root": tmp_path / "nowhere"})
    fails_with(capsys, ["--config", STAGE1, *args], f"no .tar files match {tmp_path / 'nowhere'}/llava/train")


def test_stage1_run_without_projectors(capsys, train_data, tmp_path):
    final = tmp_path / "stage1" / "final"
    final.mkdir(parents=True)
    save_file({"llm.something": torch.zeros(2)}, str(final / "trainables.safetensors"))
    (final / "adapter.json").write_text(json.dumps({"adapter": None, "layers": []}))
    args = common_overrides(train_data, tmp_path / "run", stage1_run=tmp_path / "stage1")
    fails_with(capsys, ["--config", STAGE2, *args], "holds no projector weights")


def test_stage1_run_that_is_not_a_run(capsys, train_data, tmp_path):
    args = [f"stage1_run={tmp_path}", *common_overrides(train_data, tmp_path / "run")]
    fails_with(capsys, ["--config", STAGE2, *args], f"stage1_run: {tmp_path} has no final/trainables.safetensors")
    fails_with(capsys, ["--config", STAGE2, *args[1:], "stage1_run=null"],
               "stage1_run: stage 2 starts from a stage-1 run directory")


@pytest.mark.parametrize("ds, expected", [
    ({"train_micro_batch_size_per_gpu": 3}, "train_micro_batch_size_per_gpu is 3 there but 4 from the run config"),
    ({"gradient_accumulation_steps": 8}, "gradient_accumulation_steps is 8 there but 1 from the run config"),
    ({"bf16": {"enabled": True}}, "bf16.enabled is True there but False from the run config"),
    ({"optimizer": {"type": "Adam"}}, "'optimizer' is set by the run config"),
])
def test_deepspeed_json_that_contradicts_the_run_config(capsys, train_data, tmp_path, ds, expected):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}, **ds}))
    args = common_overrides(train_data, tmp_path / "run")
    fails_with(capsys, ["--config", STAGE1, "--deepspeed", str(path), *args], f"{path}: {expected}")


def test_unknown_key_and_bad_adapter(capsys, train_data, tmp_path):
    args = common_overrides(train_data, tmp_path / "run")
    fails_with(capsys, ["--config", STAGE1, *args, "optim.learning_rate=1"], "unknown key 'optim.learning_rate'")
    fails_with(capsys, ["--config", STAGE1, *args, "adapter.name=lorra"], "adapter.name: unknown adapter 'lorra'")


def test_estimate_memory_for_a_7b_recipe_from_configs_only(capsys, tmp_path, tiny_components):
    """Llama-2-7B + CLIP ViT-L/14 (text tower included) + Whisper-large shapes, written as config.json files, a
    tokenizer and a feature extractor only (no weights)."""
    LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                vocab_size=32000).save_pretrained(tmp_path / "llm")
    AutoTokenizer.from_pretrained(tiny_components("llama").parent / "llm").save_pretrained(tmp_path / "llm")
    CLIPConfig(vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=224, patch_size=14),
               text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                num_attention_heads=12), projection_dim=768).save_pretrained(tmp_path / "vision")
    WhisperConfig(d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20,
                  decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120,
                  num_mel_bins=128).save_pretrained(tmp_path / "audio")
    WhisperFeatureExtractor(feature_size=128).save_pretrained(tmp_path / "audio")
    argv = ["--config", STAGE2, "--estimate-memory", "--gpus-per-node", "8", "--nodes", "2",
            "--deepspeed", str(REPO / "configs/ds/zero3.json"), f"model.llm={tmp_path / 'llm'}",
            f"model.vision={tmp_path / 'vision'}", f"model.audio={tmp_path / 'audio'}", "data.root=unused", "stage1_run=null"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    total = float(out.split("model: ")[1].split("B parameters")[0])
    # 6.74B Llama-2-7B + 0.30B CLIP-L's vision tower + 0.63B whisper-large's encoder (its table cut to the 1 s
    # window) + 63M trained; not CLIP's text tower (0.12B) nor Whisper's decoder (0.9B)
    assert total == 7.74, out
    trainable = float(out.split("parameters (largest tensor 131.1M); ")[1].split("M trainable")[0])
    # IMoD (LoRA-sized) at rank 8 on the 7 default targets of 32 layers: 8 x (4 x 8192 + 2 x 15104 + 15104) x 32 =
    # 19.99M, + the mlp2x_gelu projectors (1024 -> 4096 -> 4096 and 1280 -> 4096 -> 4096: 43.0M)
    assert trainable == 63.00
    assert "trainable (the imod adapter + projectors); ZeRO-3, 2 node(s) x 8 GPU(s)" in out and "per GPU" in out
    per_gpu = float(out.split("frozen backbone (fp32): about ")[1].split(" GB")[0])
    assert per_gpu == 1.88  # (4 B x 7.74B + 20 B x 63M trainable) / 16 GPUs = 1.88 GiB
