"""Bad input fails in one line, before any process group starts; the memory planner works from configs alone."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from transformers import (
    AutoTokenizer,
    CLIPConfig,
    CLIPVisionConfig,
    LlamaConfig,
    SiglipVisionConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
)

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


BAD_VALUES = [
    ("optim.lr=0", "optim.lr: must be > 0, got 0.0"),
    ("optim.lr=-1e-4", "optim.lr: must be > 0, got -0.0001"),
    ("optim.eps=0", "optim.eps: must be > 0, got 0.0"),
    ("optim.betas=[0.9, 1.0]", "optim.betas: two numbers in [0, 1), got [0.9, 1.0]"),
    ("optim.betas=[-0.1, 0.999]", "optim.betas: two numbers in [0, 1)"),
    ("optim.betas=[0.9]", "optim.betas: two numbers in [0, 1), got [0.9]"),
    ("optim.warmup_ratio=1.5", "optim.warmup_ratio: must be in [0, 1], got 1.5"),
    ("optim.warmup_ratio=-0.1", "optim.warmup_ratio: must be in [0, 1], got -0.1"),
    ("optim.grad_clip=-1", "optim.grad_clip: must be >= 0, got -1.0"),
    ("optim.weight_decay=-0.01", "optim.weight_decay: must be >= 0, got -0.01"),
    ("optim.gradient_accumulation_steps=0", "optim.gradient_accumulation_steps: must be >= 1, got 0"),
    ("train.log_every=0", "train.log_every: must be >= 1, got 0"),
    ("train.save_every=-1", "train.save_every: must be >= 0, got -1"),
    ("train.keep_last=-1", "train.keep_last: must be >= 0, got -1"),
    ("train.epochs=0", "train.epochs: must be >= 1, got 0"),
    ("train.max_bad_steps=0", "train.max_bad_steps: must be >= 1, got 0"),
    ("train.dominance_every=-2", "train.dominance_every: must be >= 0, got -2"),
    ("train.existing_run=overwrite", "train.existing_run: 'overwrite' is not one of refuse, move"),
    ("train.device=tpu", "train.device: 'tpu' is not one of auto, cuda, cpu"),
    ("max_steps=-1", "max_steps: must be >= 0"),
    ("data.num_workers=-1", "'data.num_workers' must be >= 0, got -1"),
    ("data.micro_batch_size=0", "'data.micro_batch_size' must be >= 1, got 0"),
    ("output_dir=", "output_dir: empty; name the run directory to write"),
    ("output_dir=' '", "output_dir: empty"),
]


@pytest.mark.parametrize("override, expected", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_a_bad_value_is_one_line_before_any_process_group(capsys, train_data, tmp_path, override, expected):
    fails_with(capsys, ["--config", STAGE1, *common_overrides(train_data, tmp_path / "run"), override], expected)


def test_an_output_dir_that_is_a_file_or_lies_under_one(capsys, train_data, tmp_path):
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    args = common_overrides(train_data, tmp_path / "run")
    fails_with(capsys, ["--config", STAGE1, *args, f"output_dir={afile}"],
               f"output_dir: {afile} is a file, not a directory; pick another output_dir")
    fails_with(capsys, ["--config", STAGE1, *args, f"output_dir={afile / 'run'}"],
               f"output_dir: {afile / 'run'} cannot be created, {afile} is a file")
    assert afile.read_text() == "mine"


def test_overrides_on_both_sides_of_deepspeed(capsys, train_data, tmp_path):
    """`--deepspeed X` may stand between overrides: those after it count too (the bad one after it is reported)."""
    args = common_overrides(train_data, tmp_path / "run")
    ds = str(REPO / "configs/ds/zero2.json")
    fails_with(capsys, ["--config", STAGE1, *args[:3], "--deepspeed", ds, *args[3:], "optim.lr=0"],
               "optim.lr: must be > 0")
    fails_with(capsys, ["--config", STAGE1, "optim.lr=0", "--deepspeed", ds, *args], "optim.lr: must be > 0")


@pytest.fixture
def fake_stage1(tmp_path):
    """A directory that passes the stage-1 check (projector tensors in final/): these tests never get further."""
    final = tmp_path / "stage1" / "final"
    final.mkdir(parents=True)
    save_file({"projectors.vision.0.weight": torch.zeros(2)}, str(final / "trainables.safetensors"))
    (final / "adapter.json").write_text(json.dumps({"adapter": None, "layers": []}))
    return tmp_path / "stage1"


MODEL_ERRORS = [
    (["adapter.targets=[qq_proj]"], "adapter.targets: no linear layer matches ['qq_proj'] (scope ['llm'])"),
    (["adapter.name=mora", "adapter.scope=[llm, vision, audio]", "adapter.targets=[q_proj, k_proj]"],  # GQA
     "adapter.targets: mora adapts square layers only (in == out, e.g. q_proj/o_proj); "
     "'llm.model.layers.0.self_attn.k_proj' is 64 -> 32"),
    (["adapter.name=mora", "adapter.scope=[llm, vision]", "adapter.targets=[o_proj]"],
     "adapter.targets: mora finds no square target layer in tower 'vision'"),  # CLIP's is out_proj
    (["model.vision_pool=3"], "model.vision_pool=3 must divide the 4x4 patch grid of"),
]


@pytest.mark.parametrize("extra, expected", MODEL_ERRORS, ids=["no-match", "mora-non-square", "mora-empty-tower",
                                                               "vision-pool"])
def test_adapter_and_model_errors_are_found_before_ranks_start(capsys, train_data, tmp_path, fake_stage1, extra,
                                                                expected):
    """Found on the meta-device skeleton of the composed model (no weight loaded), not inside the ranks."""
    args = common_overrides(train_data, tmp_path / "run", stage1_run=fake_stage1)
    fails_with(capsys, ["--config", STAGE2, *args, *extra], expected)


def test_vision_pool_against_siglip_so400m_384_grid(capsys, train_data, tmp_path, fake_stage1):
    """SigLIP so400m-patch14-384 has a 27x27 grid: pool 2 is refused, naming the divisors; only its config is read."""
    SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                       image_size=384, patch_size=14).save_pretrained(tmp_path / "siglip")
    args = common_overrides(train_data, tmp_path / "run", stage1_run=fake_stage1,
                            **{"model.vision": tmp_path / "siglip"})
    fails_with(capsys, ["--config", STAGE2, *args, "model.vision_pool=2"],
               f"model.vision_pool=2 must divide the 27x27 patch grid of {tmp_path / 'siglip'} "
               "(its divisors: 1, 3, 9, 27)")


def test_mora_defaults_fit_it(train_data, tmp_path, fake_stage1):
    """`adapter.name=mora` with its towers and no targets: the square attention projections of every tower (the
    tiny Llama's k/v are 64 -> 32 under grouped-query attention and are left out), checked on the skeleton."""
    from pipeline.adapters import adapter_layers, attach
    from pipeline.config import load_config
    from pipeline.model.avllm import AVLLM
    from pipeline.train.config import RunConfig
    from pipeline.train.stages import check_model

    args = common_overrides(train_data, tmp_path / "run", stage1_run=fake_stage1)
    cfg = load_config(RunConfig, STAGE2, [*args, "adapter.name=mora", "adapter.scope=[llm, vision, audio]"])
    check_model(cfg)
    model = AVLLM.skeleton(cfg.model)
    attach(model, cfg.adapter)
    leaves = {}
    for name, layer in adapter_layers(model).items():
        assert layer.in_features == layer.out_features, name
        leaves.setdefault(name.split(".")[0], set()).add(name.rsplit(".", 1)[1])
    assert leaves == {"llm": {"q_proj", "o_proj"}, "vision": {"q_proj", "k_proj", "v_proj", "out_proj"},
                      "audio": {"q_proj", "k_proj", "v_proj", "out_proj"}}
