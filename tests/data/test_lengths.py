"""Sample lengths known before the epoch: read from json and audio headers, equal to what the processor encodes,
cached beside the shards once, recomputed when a shard changes."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from pipeline.data import lengths
from pipeline.data.lengths import CACHE_DIR, ShardLengths, prepare_lengths, read_cached, shard_shapes
from pipeline.data.plan import resolve
from pipeline.data.sample import CorruptSample, decode_sample
from pipeline.model.avllm import AVLLM


@pytest.fixture(scope="module")
def processor(tiny_model_config):
    return AVLLM.from_config(tiny_model_config("llama")).build_processor()


def wav(seconds: float, rate: int) -> bytes:
    out = io.BytesIO()
    sf.write(out, np.zeros(round(seconds * rate), dtype=np.float32), rate, format="WAV")
    return out.getvalue()


def sample(key: str, question: str, **media: bytes) -> dict:
    doc = {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": "an answer"}],
           "media": {"audio": "wav"} if "wav" in media else {}}
    return {"__key__": key, "json": json.dumps(doc).encode(), **media}


@pytest.fixture
def audio_shard(tmp_path) -> Path:
    """Audio at 16 kHz on and just past a window boundary, at 22.05 and 44.1 kHz (resampled when decoded), one
    beyond max_windows, and three samples the json alone rejects."""
    path = tmp_path / "audio-000000.tar"
    with wds.TarWriter(str(path)) as tar:
        for key, seconds, rate in (("a1", 1.0, 16000), ("a2", 1.0001, 16000), ("a3", 2.3, 22050),
                                   ("a4", 0.4, 44100), ("a5", 30.0, 16000)):
            tar.write(sample(key, "<audio>\nWhat do you hear?", wav=wav(seconds, rate)))
        tar.write(sample("text", "Which is louder, a whisper or a shout?"))
        tar.write(sample("mismatch", "<audio>\n<audio>\nTwo clips?", wav=wav(1.0, 16000)))
        tar.write({"__key__": "badjson", "json": b"{not json"})
        tar.write({"__key__": "noturns", "json": json.dumps({"conversations": [], "media": {}}).encode()})
    return path


def encoded_shape(raw: dict, processor) -> tuple[int, bool, bool] | None:
    try:
        item = decode_sample(raw)
    except CorruptSample:
        return None
    encoded = processor.encode(item)
    return len(encoded.input_ids), encoded.images is not None or encoded.video is not None, encoded.audio is not None


def test_shapes_equal_the_encoded_samples_of_every_source(train_data, processor):
    """Video + audio, images and audio clips of all five sources: tokens and modality mix from headers equal those
    of the decoded, encoded sample."""
    tars = sorted(train_data["shards"].glob("*/train/*.tar"))
    assert len(tars) >= 5
    kinds = set()
    for tar in tars:
        shapes = shard_shapes(str(tar), processor)
        for raw in wds.tarfile_samples([{"url": str(tar)}]):
            expected = encoded_shape(raw, processor)
            assert shapes[raw["__key__"]] == expected, (tar.name, raw["__key__"])
            kinds.add(expected[1:])
    assert kinds == {(True, True), (True, False), (False, True)}  # text-only samples: `audio_shard`


def test_audio_windows_counted_from_the_header_and_bad_json_not_planned(audio_shard, processor):
    shapes = shard_shapes(str(audio_shard), processor)
    per_window = processor.tokens_per_window
    for raw in wds.tarfile_samples([{"url": str(audio_shard)}]):
        assert shapes[raw["__key__"]] == encoded_shape(raw, processor), raw["__key__"]
    # same question for every clip: the 1-second clip takes one window, the others differ by whole windows
    windows = {k: 1 + (shapes[k][0] - shapes["a1"][0]) / per_window for k in ("a1", "a2", "a3", "a4", "a5")}
    assert windows == {"a1": 1, "a2": 2, "a3": 3, "a4": 1, "a5": processor.max_windows}
    assert shapes["mismatch"] is None and shapes["badjson"] is None and shapes["noturns"] is None


def test_lengths_cached_beside_the_shards_once_and_recomputed_when_a_shard_changes(train_data, processor, tmp_path,
                                                                                   monkeypatch):
    shards = tmp_path / "llava"
    shutil.copytree(train_data["shards"] / "llava" / "train", shards)
    refs = resolve(str(shards), 0)
    key = processor.length_key()
    prepare_lengths(refs, processor, rank=0, world=1)
    cached = sorted(p.name for p in (shards / CACHE_DIR).iterdir())
    assert cached == sorted(f"{Path(r.path).name}.{key}.json" for r in refs)
    first = {r.path: read_cached(r.path, key) for r in refs}
    assert all(first.values())

    computed = []
    real = lengths.shard_shapes
    monkeypatch.setattr(lengths, "shard_shapes", lambda path, m: computed.append(path) or real(path, m))
    prepare_lengths(refs, processor, rank=0, world=1)
    assert computed == []  # every entry valid: nothing read again

    changed = refs[0].path
    os.utime(changed, ns=(0, 0))
    assert read_cached(changed, key) is None
    prepare_lengths(refs, processor, rank=0, world=1)
    assert computed == [changed]
    assert read_cached(changed, key) == first[changed]
    assert not [p for p in (shards / CACHE_DIR).iterdir() if p.name.startswith(".")]  # no temp file left


def test_ranks_split_the_shards_to_compute(train_data, processor, tmp_path):
    shards = tmp_path / "music"
    shutil.copytree(train_data["shards"] / "music_avqa" / "train", shards)
    refs = resolve(str(shards), 0)
    assert len(refs) >= 2
    prepare_lengths(refs, processor, rank=1, world=2)
    key = processor.length_key()
    have = [read_cached(r.path, key) is not None for r in sorted(refs, key=lambda r: r.path)]
    assert have == [i % 2 == 1 for i in range(len(refs))]


def test_read_only_shard_directory_caches_in_the_user_cache(train_data, processor, tmp_path, monkeypatch):
    shards = train_data["shards"] / "audiocaps" / "train"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(lengths.os, "access", lambda path, mode: False)  # root may write anywhere: say it may not
    refs = resolve(str(shards), 0)
    prepare_lengths(refs, processor, rank=0, world=1)
    written = sorted((tmp_path / "cache" / "avtrain" / "lengths").rglob("*.json"))
    assert len(written) == len(refs)
    table = ShardLengths(processor)
    raw = next(iter(wds.tarfile_samples([{"url": refs[0].path}])))
    assert table.shape(refs[0].path, raw["__key__"]) == encoded_shape(raw, processor)
