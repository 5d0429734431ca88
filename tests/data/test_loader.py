"""Exactly-once over 2 real ranks x 2 workers, equal steps, seeding, weighted mixing, exact resume, config checks."""

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pipeline.config import ConfigError, from_dict
from pipeline.data.config import DataConfig, SourceConfig
from pipeline.data.loader import ShardLoader
from pipeline.data.plan import epoch_plan, resolve_all
from pipeline.data.stream import mix
from tests.data.conftest import config, ids, stop_and_resume

ROOT = Path(__file__).resolve().parents[2]
RANK_SCRIPT = """
import json, sys
from pipeline.data.loader import ShardLoader
from tests.data.conftest import config, ids, stop_and_resume
cfg = config(*sys.argv[1:], num_workers=2, micro_batch_size=4, shuffle_buffer=8)
loader = ShardLoader(cfg, ids)  # rank and world size from RANK / WORLD_SIZE
print(json.dumps({"steps": loader.steps_per_epoch, "batches": [b["ids"] for b in loader]}))
"""


def _run_ranks(world: int, *dirs: Path) -> list[dict]:
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "PYTHONPATH": str(ROOT)}
        procs.append(subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, *map(str, dirs)], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return outs


def _all_keys(*dirs: Path) -> list[str]:
    import webdataset as wds

    return [s["__key__"] for d in dirs for t in sorted(d.glob("*.tar")) for s in wds.tarfile_samples([{"url": str(t)}])]


@pytest.mark.slow
def test_exactly_once_over_two_ranks_and_two_workers(shards):
    """32 samples in 8 shards of 4, micro batch 4: every sample once across 2 ranks x 2 workers, none twice."""
    outs = _run_ranks(2, shards["music_avqa"])
    seen = [k for out in outs for batch in out["batches"] for k in batch]
    assert sorted(seen) == sorted(_all_keys(shards["music_avqa"]))
    assert len(seen) == len(set(seen)) == 32
    assert [len(o["batches"]) for o in outs] == [o["steps"] for o in outs] == [4, 4]


def test_uneven_shards_give_equal_steps_and_no_duplicates(shards):
    """music_avqa (8x4) + llava (4x2) = 40 samples in 12 shards over 3 ranks x 2 workers: each rank runs the same
    number of steps (the epoch is truncated to the smallest rank), and no sample appears twice."""
    dirs = (shards["music_avqa"], shards["llava"])
    seen, steps = [], []
    for rank in range(3):
        loader = ShardLoader(config(*dirs, num_workers=2, micro_batch_size=2, shuffle_buffer=4), ids, rank, 3)
        batches = [b["ids"] for b in loader]
        steps.append(len(batches))
        seen += [k for b in batches for k in b]
    assert len(set(steps)) == 1 and steps[0] > 0
    assert len(seen) == len(set(seen)) and set(seen) <= set(_all_keys(*dirs))
    plans = [epoch_plan(resolve_all(loader.cfg), loader.cfg, 0, r, 3) for r in range(3)]
    assert all(sum(p.quotas) == p.steps == steps[0] for p in plans)


def test_too_few_shards_is_a_clear_error(shards):
    loader = ShardLoader(config(shards["llava"], num_workers=2, micro_batch_size=4), ids, 0, 4)
    with pytest.raises(ValueError, match="a rank gets no full batch"):
        loader.steps_per_epoch


def test_seeded_and_reshuffled_per_epoch(shards):
    def epoch_order(seed: int, epoch: int) -> list[str]:
        loader = ShardLoader(config(shards["music_avqa"], num_workers=0, micro_batch_size=4, seed=seed), ids)
        loader.set_epoch(epoch)
        return [k for b in loader for k in b["ids"]]

    first = epoch_order(0, 0)
    assert first == epoch_order(0, 0)
    assert first != epoch_order(0, 1) and sorted(first) == sorted(epoch_order(0, 1))
    assert first != epoch_order(1, 0)


def test_weighted_mixing():
    heavy, light = iter(["h"] * 100), iter(["l"] * 100)
    drawn = list(mix([heavy, light], [9.0, 1.0], random.Random(0)))
    assert Counter(drawn[:50])["h"] >= 40
    assert Counter(drawn) == {"h": 100, "l": 100}  # weights set the pace; every sample still comes once


def test_sources_are_mixed_in_one_epoch(shards):
    loader = ShardLoader(config(shards["music_avqa"], shards["llava"], shards["audiocaps"], num_workers=2,
                                micro_batch_size=2, shuffle_buffer=8), ids)
    seen = [k for b in loader for k in b["ids"]]
    assert {k.split("-")[0] for k in seen} == {"music_avqa", "llava", "audiocaps"}
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize("k", [1, 3])
def test_resume_continues_exactly(shards, k):
    """Stop after k batches, save the state (through json), restore in a new loader: the union is one epoch."""
    def make() -> ShardLoader:
        return ShardLoader(config(shards["music_avqa"], shards["llava"], num_workers=2, micro_batch_size=2,
                                  shuffle_buffer=6), ids)

    full, head, tail, resumed = stop_and_resume(make, k)
    assert len(head) + len(tail) == len(full) == resumed.steps_per_epoch
    assert sorted(head + tail) == sorted(full)  # same batches, same composition, nothing seen twice
    assert resumed.state_dict()["epoch"] == 1


def test_resume_refuses_different_settings(shards):
    loader = ShardLoader(config(shards["music_avqa"], num_workers=2, micro_batch_size=2), ids)
    state = loader.state_dict()
    other = ShardLoader(config(shards["music_avqa"], num_workers=1, micro_batch_size=2), ids)
    with pytest.raises(ValueError, match="'num_workers' was 2 when saved but is 1 now"):
        other.load_state_dict(state)


def test_config_from_dict_and_errors_name_the_key(shards):
    cfg = from_dict(DataConfig, {"sources": [{"shards": str(shards["llava"]), "weight": 2}], "num_frames": 4})
    assert cfg.sources[0].weight == 2.0 and cfg.num_frames == 4
    with pytest.raises(ConfigError, match=r"'data.sources\[0\].weight' must be > 0"):
        from_dict(DataConfig, {"sources": [{"shards": "x", "weight": 0}]})
    with pytest.raises(ConfigError, match="'data.micro_batch_size' must be >= 1"):
        from_dict(DataConfig, {"sources": [{"shards": "x"}], "micro_batch_size": 0})
    with pytest.raises(ValueError, match="no .tar files match"):
        ShardLoader(config(shards["llava"] / "nothing-*.tar"), ids)


def test_repeat_upsamples_a_source(shards):
    cfg = DataConfig(sources=[SourceConfig(shards=str(shards["llava"]), repeat=2)], num_workers=0, micro_batch_size=2)
    loader = ShardLoader(cfg, ids)
    seen = Counter(k for b in loader for k in b["ids"])
    assert set(seen.values()) == {2} and len(seen) == 8  # every sample once per pass, two passes
