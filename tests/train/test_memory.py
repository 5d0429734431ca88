"""The memory plan counts the model the run builds: loaded modules only, the configured adapter's real parameters."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import load_config
from pipeline.model.avllm import AVLLM
from pipeline.rundir import write_trainables
from pipeline.train.config import RunConfig
from pipeline.train.memory import parameter_counts
from pipeline.train.stages import build_model
from tests.train.conftest import REPO


@pytest.fixture(scope="module")
def stage1_export(tmp_path_factory, tiny_model_config):
    """A stage-1 run directory holding fresh projectors (what stage 2 loads), without training."""
    run = tmp_path_factory.mktemp("stage1")
    model = AVLLM.from_config(tiny_model_config("llama", audio_pool=5, num_frames=4))
    write_trainables(model, None, run / "final")
    return run


def counts(model: torch.nn.Module) -> tuple[int, int, int]:
    sizes = [p.numel() for p in model.parameters()]
    return sum(sizes), sum(p.numel() for p in model.parameters() if p.requires_grad), max(sizes)


@pytest.mark.parametrize("stage, adapter", [(1, None), (2, "lora"), (2, "moka"), (2, "delo")])
def test_counts_are_those_of_the_built_model(stage, adapter, train_data, stage1_export):
    comp = train_data["components"]
    overrides = [f"model.llm={comp / 'llm'}", f"model.vision={comp / 'vision'}", f"model.audio={comp / 'audio'}",
                 "data.root=unused"]
    if stage == 2:
        overrides += [f"stage1_run={stage1_export}", f"adapter.name={adapter}"]
    cfg = load_config(RunConfig, REPO / f"configs/demo/stage{stage}.yaml", overrides)
    built, _ = build_model(cfg)
    planned = parameter_counts(cfg)
    assert planned == counts(built)
    print(stage, adapter, planned)
