"""Session fixtures: synthetic raw data and real tar shards (raw and predecoded), built once."""

import json
from pathlib import Path

import pytest

from data_prep.shard import write_shards
from data_prep.synthetic import generate
from pipeline.data.config import DataConfig, SourceConfig


@pytest.fixture(scope="session")
def raw(tmp_path_factory) -> dict[str, Path]:
    return generate(tmp_path_factory.mktemp("raw"), n=8, seed=1)


@pytest.fixture(scope="session")
def shards(raw, tmp_path_factory) -> dict[str, Path]:
    """music_avqa: 32 samples in 8 shards of 4; llava and audiocaps: 8 samples in 4 shards of 2; one dir each."""
    out = {}
    for source, maxcount in (("music_avqa", 4), ("llava", 2), ("audiocaps", 2)):
        out[source] = tmp_path_factory.mktemp(source)
        write_shards(source, raw[source], "train", out[source], maxcount=maxcount, progress=False)
    out["music_avqa_predecoded"] = tmp_path_factory.mktemp("predecoded")
    write_shards("music_avqa", raw["music_avqa"], "train", out["music_avqa_predecoded"], maxcount=4,
                 predecode=True, num_frames=8, progress=False)
    return out


def ids(samples) -> dict:
    """A test 'processor': the batch is the sample keys (plus shapes, to check decoding)."""
    return {"ids": [s.meta["key"] for s in samples], "video": [None if s.video is None else s.video.shape for s in samples]}


def config(*dirs: Path, **kw) -> DataConfig:
    return DataConfig(sources=[SourceConfig(shards=str(d)) for d in dirs], **kw)


def stop_and_resume(make, k: int) -> tuple[list, list, list, object]:
    """One epoch of a fresh loader from `make()` (its batches' ids), and the same epoch cut after k batches: the
    first k from one loader, the rest from a new one restored from the first's state (through json). Returns
    (full, head, tail, the restored loader)."""
    full = [tuple(b["ids"]) for b in make()]
    first = make()
    head = []
    for batch in first:
        head.append(tuple(batch["ids"]))
        if len(head) == k:
            break
    resumed = make()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    tail = [tuple(b["ids"]) for b in resumed]
    return full, head, tail, resumed

