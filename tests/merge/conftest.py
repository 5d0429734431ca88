"""Run directories made without DeepSpeed: the tiny model, an adapter with perturbed weights (LoRA's B is zero at
init, which would make every merge trivially right), `final/` written by the trainer's own `write_trainables`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.adapters import AdapterConfig, attach, mark_trainable
from pipeline.config import save_config
from pipeline.model.avllm import AVLLM
from pipeline.rundir import write_trainables
from pipeline.train.config import RunConfig


@pytest.fixture(autouse=True)
def _single_thread():
    torch.set_num_threads(1)


def write_run(root: Path, model: AVLLM, adapter: AdapterConfig | None) -> Path:
    """`root` as a finished run of `model` (projectors and adapter as they are now): `final/` and config.yaml."""
    mark_trainable(model, ["projectors.*"])
    write_trainables(model, adapter, root / "final")
    save_config(RunConfig(output_dir=str(root), stage=2 if adapter else 1, model=model.config,
                          adapter=adapter or AdapterConfig()), root / "config.yaml")
    return root


def make_run(root: Path, model_cfg, adapter: AdapterConfig | None, seed: int = 1) -> tuple[Path, AVLLM]:
    """A run directory with `final/` and config.yaml; returns it and the trained (unmerged) model in eval mode."""
    model = AVLLM.from_config(model_cfg)
    if adapter is not None:
        attach(model, adapter)
    mark_trainable(model, ["projectors.*"])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return write_run(root, model, adapter), model.eval()


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_config) -> tuple[Path, AVLLM]:
    return make_run(tmp_path_factory.mktemp("lora-run"), tiny_model_config("llama"),
                    AdapterConfig(name="lora", rank=4, scope=["llm"]))
