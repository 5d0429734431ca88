"""Stage 1 then stage 2 on 2 CPU ranks with real DeepSpeed, ZeRO-2 and ZeRO-3, LoRA and IMoD."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from safetensors.torch import load_file

from pipeline.adapters import attach
from pipeline.config import load_config
from pipeline.model.avllm import AVLLM
from pipeline.model.processor import AVSample
from pipeline.rundir import RunDir, load_trainables
from pipeline.train.config import RunConfig
from pipeline.train.stages import build_model
from tests.train.conftest import REPO, common_overrides, metrics, run_train


def probe_batch(model: AVLLM) -> dict:
    rng = torch.Generator().manual_seed(0)
    video = (torch.rand(4, 64, 64, 3, generator=rng) * 255).to(torch.uint8).numpy()
    audio = torch.randn(16000, generator=rng).numpy()
    return model.build_processor()([
        AVSample([{"from": "human", "value": "<video>\n<audio>\nHow many beeps?"}, {"from": "gpt", "value": "two"}],
                 video=video, audio=audio),
        AVSample([{"from": "human", "value": "What colour?"}, {"from": "gpt", "value": "red"}])])


def test_stage1_trains_projectors_and_writes_a_self_describing_run(stage1_run):
    for name in ("config.yaml", "ds_config.json", "metrics.jsonl", "loss.png", "data_report.json",
                 "final/trainables.safetensors", "final/adapter.json"):
        assert (stage1_run / name).is_file(), name
    assert list((stage1_run / "tb").glob("events.out.tfevents.*"))
    rows = metrics(stage1_run)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert {"loss", "lr", "samples_per_s", "tokens_per_s"} <= rows[0].keys()
    assert rows[-1]["loss"] < rows[0]["loss"]
    saved = load_file(stage1_run / "final/trainables.safetensors")
    assert saved and all(k.startswith("projectors.") for k in saved)
    assert RunDir(stage1_run).complete_checkpoints()[-1].name == "step-8"


@pytest.mark.parametrize("adapter, zero", [("lora", "zero2"), ("lora", "zero3"), ("imod", "zero2"), ("imod", "zero3")])
def test_stage2_starts_from_stage1_projectors_and_exports_what_it_trained(stage1_run, train_data, tmp_path,
                                                                           adapter, zero):
    out = tmp_path / f"stage2-{adapter}"
    overrides = common_overrides(train_data, out, max_steps=8, stage1_run=stage1_run, **{"adapter.name": adapter,
                                 "optim.lr": 3e-3, "train.dominance_every": 4})
    # the model stage 2 starts from carries the stage-1 projectors, by value
    cfg = load_config(RunConfig, REPO / "configs/demo/stage2.yaml", overrides)
    start, report = build_model(cfg)
    stage1 = load_file(stage1_run / "final/trainables.safetensors")
    for name, tensor in stage1.items():
        torch.testing.assert_close(start.get_parameter(name).detach(), tensor, rtol=0, atol=0)
    assert report.trainable_params > 0

    run = run_train(REPO / "configs/demo/stage2.yaml", overrides + [f"deepspeed=configs/ds/{zero}.json"])
    rows = metrics(run)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert 0.0 <= rows[3]["nontext_dominance"] <= 1.0
    exported = load_file(run / "final/trainables.safetensors")
    assert any(".lora_A" in k for k in exported) and any(k.startswith("projectors.") for k in exported)

    # the export reloads into a fresh model and gives the logits of DeepSpeed's own consolidated final weights
    fresh = AVLLM.from_config(cfg.model).eval()
    load_trainables(fresh, run / "final")
    reference = AVLLM.from_config(cfg.model).eval()
    attach(reference, dataclasses.replace(cfg.adapter))
    last = RunDir(run).complete_checkpoints()[-1]
    consolidated = get_fp32_state_dict_from_zero_checkpoint(str(last.parent), tag=last.name,
                                                           exclude_frozen_parameters=True)
    missing = reference.load_state_dict(consolidated, strict=False)
    assert not missing.unexpected_keys
    batch = probe_batch(fresh)
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch).logits, reference(**batch).logits, rtol=1e-6, atol=1e-6)
        base = AVLLM.from_config(cfg.model).eval()
        assert not torch.allclose(fresh(**batch).logits, base(**batch).logits, atol=1e-4)
