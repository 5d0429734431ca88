"""Decode round trips on real shards: frames, audio rate and length, image size; predecoded matches raw."""

import numpy as np
import pytest
import webdataset as wds

from pipeline.data.sample import CorruptSample, allowed_file, decode_sample
from pipeline.model.processor import AVSample


def _samples(directory):
    return [s for tar in sorted(directory.glob("*.tar")) for s in wds.tarfile_samples([{"url": str(tar)}],
                                                                                      select_files=allowed_file)]


def test_video_and_audio_round_trip(shards):
    for sample in _samples(shards["music_avqa"])[:6]:
        out = decode_sample(sample, num_frames=8)
        assert isinstance(out, AVSample)
        assert out.video.shape == (8, 64, 64, 3) and out.video.dtype == np.uint8
        assert out.audio.dtype == np.float32 and out.audio.ndim == 1
        # 2 s at 16 kHz; clips without a wav carry the AAC track (encoder priming adds up to ~2k samples)
        assert 32000 <= len(out.audio) <= 34100
        assert out.meta["source"] == "music_avqa" and out.meta["type"] and out.meta["answer"]
        assert out.conversations[0]["value"].startswith("<video>\n<audio>\n")


def test_frame_count_follows_config(shards):
    sample = _samples(shards["music_avqa"])[0]
    assert decode_sample(sample, num_frames=4).video.shape == (4, 64, 64, 3)


def test_image_and_audio_only_samples(shards):
    decoded = [decode_sample(s) for s in _samples(shards["llava"])]
    images = [d for d in decoded if d.images]
    assert images and all(d.images[0].size == (64, 64) and d.images[0].mode == "RGB" for d in images)
    audio = [d for d in decoded if d.audio is not None]
    assert audio and all(len(d.audio) == 16000 and d.video is None for d in audio)


def test_predecoded_matches_raw(shards):
    raw = {s["__key__"]: decode_sample(s) for s in _samples(shards["music_avqa"])}
    for sample in _samples(shards["music_avqa_predecoded"])[:6]:
        pre = decode_sample(sample)
        ref = raw[sample["__key__"]]
        assert pre.video.shape == ref.video.shape
        assert np.abs(pre.video.astype(int) - ref.video.astype(int)).mean() < 4  # jpg re-encoding only
        assert len(pre.audio) == len(ref.audio) and np.abs(pre.audio - ref.audio).max() < 1e-3


def test_placeholder_count_must_match_media(shards):
    sample = dict(_samples(shards["audiocaps"])[0])
    sample["json"] = sample["json"].replace(b"<audio>", b"")
    with pytest.raises(CorruptSample, match="placeholder_mismatch"):
        decode_sample(sample)
