"""Session fixtures: synthetic raw data and real tar shards (raw and predecoded), built once."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from data_prep.shard import write_shards
from data_prep.synthetic import generate
from pipeline.data.config import DataConfig, SourceConfig
from pipeline.model.packing import plan_rows


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


@dataclass
class Encoded:
    key: str
    input_ids: list[int]
    images: object
    video: object
    audio: object


class Lengths:
    """A test processor: a sample's 'tokens' are its text plus a fixed count per medium placeholder (also known
    without decoding, `length`); batches name the keys; `encoded` counts the samples encoded."""

    def __init__(self) -> None:
        self.encoded = 0

    def length(self, conversations: list[dict], audio_samples: int | None = None) -> int:
        text = "".join(t["value"] for t in conversations)
        return len(text) + 40 * text.count("<image>") + 200 * text.count("<video>") + 60 * text.count("<audio>")

    def length_key(self) -> str:
        return "test-lengths"

    def encode(self, sample) -> Encoded:
        self.encoded += 1
        tokens = self.length(sample.conversations)
        return Encoded(sample.meta["key"], [0] * tokens, sample.images or None, sample.video, sample.audio)

    def collate(self, items: list[Encoded]) -> dict:
        return {"ids": [e.key for e in items], "lengths": [len(e.input_ids) for e in items]}

    def pack(self, items: list[Encoded], max_tokens: int) -> dict:
        rows = plan_rows([len(e.input_ids) for e in items], max_tokens)
        return {"ids": [items[i].key for row in rows for i in row],
                "rows": [sum(len(items[i].input_ids) for i in row) for row in rows]}


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

