"""ZeRO-3 with one rank that only ever sees text-only samples: its encoders still run, so nothing hangs."""

from __future__ import annotations

import json

from data_prep.shard import write_shards
from pipeline.config import load_config
from pipeline.data.plan import epoch_plan, resolve_all
from pipeline.train.config import RunConfig
from tests.train.conftest import REPO, common_overrides, metrics, run_train

CONFIG = REPO / "configs/demo/stage2.yaml"


def write_text_only_shard(shards_root) -> None:
    raw = shards_root.parent / "raw-text-only"
    raw.mkdir(exist_ok=True)
    entries = [{"id": f"t{i}", "conversations": [{"from": "human", "value": f"Say the number {i % 4}."},
                                                  {"from": "gpt", "value": str(i % 4)}]} for i in range(8)]
    (raw / "train.json").write_text(json.dumps(entries))
    write_shards("llava", raw, "train", shards_root / "text_only" / "train", maxcount=8, progress=False)


def test_a_text_only_rank_trains_imod_under_zero3(train_data, stage1_run, tmp_path):
    write_text_only_shard(train_data["shards"])
    sources = "[{shards: text_only/train}, {shards: music_avqa/train/music_avqa-train-000000.tar}]"
    overrides = common_overrides(train_data, tmp_path / "mixed", max_steps=2, stage1_run=stage1_run,
                                 deepspeed="configs/ds/zero3.json", **{"adapter.name": "imod",
                                 "data.num_workers": 1, "data.sources": sources})
    cfg = load_config(RunConfig, CONFIG, overrides)
    # one 8-sample shard per source: each rank holds a single source, so one rank's batches are all text-only
    plan = epoch_plan(resolve_all(cfg.data), cfg.data, epoch=0, rank=0, world=2)
    assert sorted(sorted({s.source for s in share}) for share in plan.shares) == [[0], [1]]
    run = run_train(CONFIG, overrides, timeout=240)
    assert [r["step"] for r in metrics(run)] == [1, 2]
