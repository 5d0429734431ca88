"""Batching modes (`data.batching: group | pack`) keep the loader's guarantees: equal steps on every rank, every
sample at most once (exactly once when no rank's share is truncated), exact resume (also inside a grouping window);
`group` cuts padding, `pack` joins each micro-batch into rows of at most `max_tokens`."""

from __future__ import annotations

import json

import pytest

from pipeline.data.loader import ShardLoader
from tests.data.conftest import Lengths, config, stop_and_resume
from tests.data.test_loader import _all_keys


MODES = {"group": {"batching": "group", "group_batches": 3}, "pack": {"batching": "pack", "max_tokens": 700}}


def loader(dirs, rank: int, world: int, processor: Lengths | None = None, **kw) -> ShardLoader:
    settings = {"num_workers": 2, "micro_batch_size": 2, "shuffle_buffer": 4, **kw}
    return ShardLoader(config(*dirs, **settings), processor or Lengths(), rank, world)


@pytest.mark.parametrize("mode", MODES)
def test_equal_steps_and_each_sample_at_most_once_with_uneven_shards(shards, mode):
    """music_avqa (8x4) + llava (4x2) + audiocaps (4x2) over 2 ranks x 2 workers: equal steps per rank as planned,
    no sample twice; with pack the micro-batches are exactly those of pad."""
    dirs = (shards["music_avqa"], shards["llava"], shards["audiocaps"])
    per_mode = {}
    for name, kw in (("pad", {}), (mode, MODES[mode])):
        batches, steps = [], []
        for rank in range(2):
            one = loader(dirs, rank, 2, **kw)
            mine = [b for b in one]
            assert len(mine) == one.steps_per_epoch
            steps.append(len(mine))
            batches += mine
        assert len(set(steps)) == 1 and steps[0] > 0
        seen = [k for b in batches for k in b["ids"]]
        assert len(seen) == len(set(seen)) and set(seen) <= set(_all_keys(*dirs))
        per_mode[name] = batches
    if mode == "pack":
        assert sorted(sorted(b["ids"]) for b in per_mode["pack"]) == sorted(sorted(b["ids"]) for b in per_mode["pad"])
        assert all(r <= 700 for b in per_mode["pack"] for r in b["rows"])
    else:  # same number of batches, less padding
        def padding(batches):
            return sum(max(b["lengths"]) * len(b["lengths"]) - sum(b["lengths"]) for b in batches)

        assert len(per_mode["group"]) == len(per_mode["pad"])
        assert padding(per_mode["group"]) < padding(per_mode["pad"])


@pytest.mark.parametrize("mode", MODES)
def test_every_sample_exactly_once_when_no_share_is_truncated(shards, mode):
    seen = [k for rank in range(2) for b in loader([shards["music_avqa"]], rank, 2, **MODES[mode]) for k in b["ids"]]
    assert sorted(seen) == sorted(_all_keys(shards["music_avqa"]))


@pytest.mark.parametrize("mode,k", [("group", 1), ("group", 2), ("pack", 3)])
def test_resume_continues_exactly(shards, mode, k):
    """Stop after k batches (group: inside a 3-batch window), restore from the json state: the union is one epoch
    with the same batches."""
    dirs = (shards["music_avqa"], shards["llava"])

    def make() -> ShardLoader:
        return loader(dirs, 0, 1, **MODES[mode])

    full, head, tail, resumed = stop_and_resume(make, k)
    assert len(head) + len(tail) == len(full) == resumed.steps_per_epoch
    assert sorted(head + tail) == sorted(full)


def test_group_decodes_each_sample_when_its_batch_is_handed_out(shards):
    """With lengths known before the epoch, a grouping window is planned from them: the worker holds one micro-batch
    of decoded samples, not the window's, and a resume inside a window decodes only the batches still to come."""
    counting = Lengths()
    one = loader([shards["music_avqa"]], 0, 1, counting, num_workers=0, **MODES["group"])
    batches = iter(one)
    for k in (1, 2):  # inside the first window of 3 batches
        next(batches)
        assert counting.encoded == 2 * k  # micro_batch_size 2
    state = one.state_dict()
    batches.close()

    again = Lengths()
    resumed = loader([shards["music_avqa"]], 0, 1, again, num_workers=0, **MODES["group"])
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert again.encoded == 2 * len(rest) == 2 * (one.steps_per_epoch - 2)


def test_resume_refuses_other_batching(shards):
    state = loader([shards["music_avqa"]], 0, 1, **MODES["pack"]).state_dict()
    with pytest.raises(ValueError, match="'batching'"):
        loader([shards["music_avqa"]], 0, 1).load_state_dict(state)


@pytest.mark.parametrize("settings,match", [({"batching": "bucket"}, "'data.batching' must be one of pad, group, pack"),
                                            ({"batching": "pack"}, "'data.max_tokens' must be set"),
                                            ({"group_batches": 0}, "'data.group_batches' must be >= 1")])
def test_bad_batching_settings_name_the_key(shards, settings, match):
    with pytest.raises(ValueError, match=match):
        config(shards["llava"], **settings).validate()
