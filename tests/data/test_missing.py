"""Missing-modality training: the per-sample assignment (rates, determinism across ranks, epochs and resume) and
the token layouts `drop` and `placeholder` give."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.config import ConfigError, load_config
from pipeline.data.loader import ShardLoader
from pipeline.data.missing import MissingConfig, apply_missing, lost_modality
from pipeline.model.avllm import AVLLM
from pipeline.model.processor import AVSample
from pipeline.train.config import RunConfig
from tests.data.conftest import config

KEYS = [f"music_avqa/{i:05d}" for i in range(4000)]


def within_sampling_error(observed: int, n: int, p: float) -> bool:
    return abs(observed / n - p) <= 4 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_single_modality_rate_is_the_requested_share(rate):
    lost = [lost_modality(MissingConfig(rate=rate, type="visual"), k) for k in KEYS]
    assert set(lost) == {None, "visual"}
    assert within_sampling_error(lost.count("visual"), len(KEYS), rate)


def test_both_splits_the_affected_samples_by_both_ratio():
    cfg = MissingConfig(rate=0.6, type="both", both_ratio=0.25)
    lost = [lost_modality(cfg, k) for k in KEYS]
    affected = len(KEYS) - lost.count(None)
    assert within_sampling_error(affected, len(KEYS), 0.6)
    assert within_sampling_error(lost.count("visual"), affected, 0.25)
    # the affected set does not depend on the split: the same samples are hit as with type audio
    same_rate = [lost_modality(MissingConfig(rate=0.6, type="audio"), k) for k in KEYS]
    assert [x is None for x in lost] == [x is None for x in same_rate]


def test_assignment_is_a_function_of_seed_and_sample():
    cfg = MissingConfig(rate=0.5, type="both")
    first = [lost_modality(cfg, k) for k in KEYS[:500]]
    assert first == [lost_modality(MissingConfig(rate=0.5, type="both"), k) for k in KEYS[:500]]
    other = [lost_modality(MissingConfig(rate=0.5, type="both", seed=1), k) for k in KEYS[:500]]
    assert sum(a != b for a, b in zip(first, other)) > 100
    assert all(lost_modality(MissingConfig(rate=0.0), k) is None for k in KEYS)
    assert all(lost_modality(MissingConfig(rate=1.0, type="audio"), k) == "audio" for k in KEYS)


def seen(samples: list[AVSample]) -> dict:
    """A test 'processor': what each sample of the batch lacks."""
    return {"seen": [(s.meta["key"], s.meta.get("missing"), s.video is None, s.audio is None) for s in samples]}


def collect(loader: ShardLoader, batches: int | None = None) -> dict:
    out = {}
    for i, batch in enumerate(loader):
        out.update({key: rest for key, *rest in batch["seen"]})
        if batches is not None and i + 1 == batches:
            break
    return out


def test_same_assignment_on_every_rank_epoch_and_after_resume(shards):
    cfg = config(shards["music_avqa"], micro_batch_size=4, num_workers=0, shuffle_buffer=8, num_frames=2)
    missing = MissingConfig(rate=0.5, type="both")
    one = ShardLoader(cfg, seen, rank=0, world_size=1, missing=missing)
    epoch0, epoch1 = collect(one), collect(one)
    assert len(epoch0) == 32 and epoch0 == epoch1
    assert {lost for lost, _, _ in epoch0.values()} == {None, "audio", "visual"}
    for lost, no_video, no_audio in epoch0.values():  # fill=drop removes exactly the lost input
        assert (no_video, no_audio) == (lost == "visual", lost == "audio")
    assert sum(one.missing.values()) == 2 * sum(lost is not None for lost, _, _ in epoch0.values())

    ranks = {}
    for rank in (0, 1):
        ranks.update(collect(ShardLoader(cfg, seen, rank=rank, world_size=2, missing=missing)))
    assert ranks == epoch0

    first = ShardLoader(cfg, seen, rank=0, world_size=1, missing=missing)
    before = collect(first, batches=3)
    resumed = ShardLoader(cfg, seen, rank=0, world_size=1, missing=missing)
    resumed.load_state_dict(first.state_dict())
    assert {**before, **collect(resumed)} == epoch0
    with pytest.raises(ValueError, match="'missing' was"):
        ShardLoader(cfg, seen, rank=0, world_size=1, missing=MissingConfig(rate=0.2)).load_state_dict(
            first.state_dict())


@pytest.fixture(scope="module")
def processor(tiny_model_config):
    return AVLLM.from_config(tiny_model_config("llama")).build_processor()


def av_sample() -> AVSample:
    rng = np.random.default_rng(0)
    return AVSample(conversations=[{"from": "human", "value": "<video>\n<audio>\nWhich instrument plays first?"},
                                   {"from": "gpt", "value": "the piano"}],
                    video=rng.integers(0, 255, (4, 40, 40, 3), dtype=np.uint8),
                    audio=rng.standard_normal(24000).astype(np.float32), meta={"source": "music_avqa", "id": "7"})


def count(ids: list[int], token: int) -> int:
    return sum(t == token for t in ids)


def test_drop_removes_the_modality_tokens_and_keeps_the_rest(processor):
    full = processor.encode(av_sample())
    video, audio = processor.token_ids["<video>"], processor.token_ids["<audio>"]
    assert count(full.input_ids, video) > 0 and count(full.input_ids, audio) > 0
    for lost, gone, kept, field in (("visual", video, audio, "video"), ("audio", audio, video, "audio")):
        enc = processor.encode(apply_missing(av_sample(), MissingConfig(rate=1.0, type=lost)))
        assert count(enc.input_ids, gone) == 0 and getattr(enc, field) is None
        assert count(enc.input_ids, kept) == count(full.input_ids, kept)
        text = [t for t in full.input_ids if t != gone]
        assert len(enc.input_ids) <= len(text)  # the placeholder's line break goes with it
        assert [t for t, lab in zip(enc.input_ids, enc.labels) if lab != -100] == \
            [t for t, lab in zip(full.input_ids, full.labels) if lab != -100]


def test_placeholder_keeps_the_layout_and_feeds_neutral_media(processor):
    full = processor.encode(av_sample())
    visual = processor.encode(apply_missing(av_sample(), MissingConfig(rate=1.0, type="visual", fill="placeholder")))
    audio = processor.encode(apply_missing(av_sample(), MissingConfig(rate=1.0, type="audio", fill="placeholder")))
    for enc in (visual, audio):
        assert enc.input_ids == full.input_ids and enc.labels == full.labels
    black = processor.image_processor(images=[np.zeros((40, 40, 3), np.uint8)], return_tensors="pt")["pixel_values"]
    assert visual.video.shape == full.video.shape and (visual.video == black).all()
    assert (audio.audio == audio.audio.flatten()[0]).all() and not (full.audio == full.audio.flatten()[0]).all()
    assert (visual.audio == full.audio).all() and (audio.video == full.video).all()


@pytest.mark.parametrize("override, key", [("missing.rate=1.5", "missing.rate"), ("missing.type=text", "missing.type"),
                                           ("missing.fill=zeros", "missing.fill")])
def test_bad_missing_settings_fail_in_one_line(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(RunConfig, None, [override])
