"""The shipped configs: every recipe loads and validates once its placeholder paths are filled."""

from __future__ import annotations

import json

import pytest

from pipeline.config import load_config
from pipeline.train.config import RunConfig
from pipeline.train.ds_config import offloads_optimizer, resolve_ds_config, zero_stage
from tests.train.conftest import REPO

RECIPES = sorted((REPO / "configs").glob("stage[12]/*.yaml")) + sorted((REPO / "configs/demo").glob("*.yaml"))
DS = sorted((REPO / "configs/ds").glob("*.json"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_loads_with_paths_filled(recipe, train_data):
    comp = train_data["components"]
    cfg = load_config(RunConfig, recipe, [f"model.llm={comp / 'llm'}", f"model.vision={comp / 'vision'}",
                                          f"model.audio={comp / 'audio'}", "stage1_run=null"])
    assert cfg.stage in (1, 2) and (cfg.data.sources or cfg.continual.tasks)  # a sequence's tasks carry the shards
    if cfg.stage == 2:
        assert cfg.adapter.scope == ["llm"]
    resolve_ds_config(cfg, world_size=8)


@pytest.mark.parametrize("path", DS, ids=lambda p: p.name)
def test_deepspeed_configs_are_explicit_and_agree_with_run_configs(path, train_data):
    raw = json.loads(path.read_text())
    assert "auto" not in json.dumps(raw)
    comp = train_data["components"]
    cfg = load_config(RunConfig, REPO / "configs/demo/stage1.yaml", [f"model.llm={comp / 'llm'}", f"deepspeed={path}",
                                                                     "model.vision=null", "model.audio=null"])
    resolved = resolve_ds_config(cfg, world_size=2)
    assert resolved["train_batch_size"] == cfg.data.micro_batch_size * 2
    assert zero_stage(resolved) == int(path.stem[4])
    assert offloads_optimizer(resolved) == ("offload" in path.stem)
