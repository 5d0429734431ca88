"""Corrupt media and json are skipped and counted by reason; unreadable shards are named; nothing is unpickled."""

import json
import logging
import pickle
import shutil
from pathlib import Path

import pytest
import webdataset as wds

from pipeline.data.loader import DataExhausted, ShardLoader
from pipeline.data.sample import allowed_file
from tests.data.conftest import Lengths, config, ids


class _WritesFile:
    """A pickle payload whose unpickling writes `path`: proof of any unpickling."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').write('unpickled')",)


def _write(directory: Path, name: str, samples: list[dict], listed: int | None = None) -> None:
    """A tar of `samples` (or, with listed=n, garbage bytes) plus its entry in the directory's index."""
    if listed is None:
        with wds.TarWriter(str(directory / name), encoder=False) as tar:
            for s in samples:
                tar.write(s)
    else:
        (directory / name).write_bytes(b"this is not a tar file" * 100)
    index = directory / "corrupt.index.json"
    doc = json.loads(index.read_text()) if index.exists() else {"shards": []}
    doc["shards"].append({"name": name, "samples": len(samples) if listed is None else listed})
    index.write_text(json.dumps(doc))


def _originals(shards) -> list[dict]:
    """Real samples with a wav (so that every corruption below hits a medium the sample has)."""
    tars = sorted(shards["music_avqa"].glob("*.tar"))
    samples = [dict(s) for t in tars for s in wds.tarfile_samples([{"url": str(t)}], select_files=allowed_file)]
    return [s for s in samples if "wav" in s][:9]


@pytest.fixture(scope="module")
def damaged(shards, tmp_path_factory) -> tuple[Path, Path]:
    """A shard set with good samples, corrupt ones, pickle payloads and a garbage tar; and the payload's marker."""
    tmp = tmp_path_factory.mktemp("damaged")
    marker = tmp / "pwned.txt"
    payload = pickle.dumps(_WritesFile(marker))
    good = _originals(shards)  # 9 samples
    bad = [dict(s) for s in good[:5]]
    bad[0]["mp4"] = bad[0]["mp4"][: len(bad[0]["mp4"]) // 3]  # truncated mp4
    bad[1]["wav"] = b"RIFF\x10\x00\x00\x00WAVEgarbage" * 20  # garbage wav
    bad[2]["json"] = bad[2]["json"][:-7]  # broken json
    doc = json.loads(bad[3]["json"])
    doc["media"]["audio"] = "pyd"  # points the decoder at a pickle key
    bad[3]["json"], bad[3]["pyd"] = json.dumps(doc).encode(), payload
    bad[4]["pickle"] = payload  # an extra pickle key next to good media
    for i, s in enumerate(bad):
        s["__key__"] = f"bad{i}"
    directory = tmp / "shards"
    directory.mkdir()
    _write(directory, "good-0.tar", good)
    _write(directory, "bad-0.tar", bad)
    _write(directory, "garbage-0.tar", [], listed=4)
    return directory, marker


def test_the_payload_really_acts_when_unpickled(tmp_path):
    control = tmp_path / "control.txt"
    pickle.loads(pickle.dumps(_WritesFile(control)))
    assert control.exists()


def test_corrupt_samples_are_skipped_and_counted(damaged):
    directory, marker = damaged
    loader = ShardLoader(config(directory, num_workers=0, micro_batch_size=1, shuffle_buffer=4), ids)
    seen = [k for batch in loader for k in batch["ids"]]
    assert not marker.exists()
    assert "bad4" in seen  # the extra .pickle key is ignored, the sample itself is fine
    assert not {"bad0", "bad1", "bad2", "bad3"} & set(seen)
    # the short pass is refilled by a second pass over the share, so each corrupt sample may be counted twice
    for reason in ("bad_video", "bad_audio", "bad_json", "missing_media", "unreadable_shard"):
        assert loader.skipped[reason] >= 1, (reason, loader.skipped)  # missing_media: .pyd is never read from tar
    assert any("garbage-0.tar" in s for s in loader.bad_shards)
    assert len(seen) == loader.steps_per_epoch  # the short pass was refilled: equal steps despite the damage


def test_group_batching_skips_corrupt_samples_it_planned_from_lengths(damaged):
    """`group` plans from lengths read before the epoch, so a sample whose json is fine but whose mp4 is truncated
    fails when its micro-batch is handed out: that batch goes out one short and the failure is counted."""
    directory, marker = damaged
    settings = {"num_workers": 0, "micro_batch_size": 2, "shuffle_buffer": 4, "batching": "group", "group_batches": 2}
    loader = ShardLoader(config(directory, **settings), Lengths())
    batches = [batch["ids"] for batch in loader]
    seen = [k for ids in batches for k in ids]
    assert not marker.exists()
    assert not {"bad0", "bad1", "bad2", "bad3"} & set(seen)
    for reason in ("bad_video", "bad_audio", "bad_json", "missing_media", "unreadable_shard"):
        assert loader.skipped[reason] >= 1, (reason, loader.skipped)
    assert len(batches) == loader.steps_per_epoch
    assert 1 in {len(ids) for ids in batches}  # bad0's batch


@pytest.mark.parametrize("batching", ["pad", "group"])
def test_resume_is_exact_on_damaged_data(damaged, batching):
    """Skips and refill passes are replayed identically: stop, restore, and the rest matches the full run."""
    directory, _ = damaged
    settings = {"num_workers": 2, "micro_batch_size": 1, "shuffle_buffer": 4, "batching": batching,
                "group_batches": 3}

    def make() -> ShardLoader:
        return ShardLoader(config(directory, **settings), Lengths() if batching == "group" else ids)

    full = [tuple(b["ids"]) for b in make()]
    first = make()
    head = [tuple(b["ids"]) for _, b in zip(range(5), first)]
    resumed = make()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    tail = [tuple(b["ids"]) for b in resumed]
    assert sorted(head + tail) == sorted(full)


class _PickyProcessor:
    """An AVProcessor-shaped callable that rejects one sample by raising ValueError in `encode`."""

    def encode(self, sample):
        if sample.meta["key"] == "bad4":
            raise ValueError("sample bad4: too long")
        return sample.meta["key"]

    def collate(self, encoded):
        return {"ids": encoded}

    def __call__(self, samples):
        return self.collate([self.encode(s) for s in samples])


def test_a_share_without_one_good_batch_fails_loudly(damaged):
    """Worker 1 gets the bad shard and the garbage tar: one good sample per pass never fills a batch of 2."""
    directory, _ = damaged
    loader = ShardLoader(config(directory, num_workers=0, micro_batch_size=2, shuffle_buffer=4), ids, 1, 2)
    with pytest.raises(DataExhausted) as raised:
        list(loader)
    message = str(raised.value)
    assert message.startswith("data: rank 1 has no decodable batch left: a whole pass over worker 0's shards (")
    assert "bad-0.tar" in message and "garbage-0.tar" in message and "\n" not in message
    assert "skipped on rank 1: " in message and "unreadable_shard=1" in message, message


def test_a_shard_shorter_than_its_index_is_reported_once_and_refilled(shards, tmp_path, caplog):
    """Real tars from data_prep.shard, one over-promised in the index: warned about and counted once over two
    epochs (each reads it again, twice with the refill pass), and every epoch still yields its planned batches."""
    directory = tmp_path / "short"
    shutil.copytree(shards["llava"], directory)
    index = next(directory.glob("*.index.json"))
    doc = json.loads(index.read_text())
    first = doc["shards"][0]
    found, first["samples"] = first["samples"], first["samples"] + 3
    index.write_text(json.dumps(doc))
    loader = ShardLoader(config(directory, num_workers=0, micro_batch_size=1, shuffle_buffer=2), ids)
    with caplog.at_level(logging.WARNING, logger="pipeline.data.loader"):
        for _ in range(2):
            assert len(list(loader)) == loader.plan(loader.epoch).steps == found + 3 + 2 * (len(doc["shards"]) - 1)
    path = str(directory / first["name"])
    assert loader.short_shards == {path: (found + 3, found)}
    assert loader.skipped["short_shard"] == 1
    warned = [r.getMessage() for r in caplog.records if "index promises" in r.getMessage()]
    assert warned == [f"data: shard {path} holds {found} samples, its index promises {found + 3}"]


def test_processor_rejections_are_counted(damaged):
    directory, _ = damaged
    loader = ShardLoader(config(directory, num_workers=0, micro_batch_size=2, shuffle_buffer=4), _PickyProcessor())
    batches = [batch["ids"] for batch in loader]
    assert all(len(b) == 2 for b in batches)  # a rejected sample is replaced by the next one: batches stay full
    assert "bad4" not in {k for b in batches for k in b} and loader.skipped["rejected_by_processor"] >= 1


def test_decoder_never_unpickles_even_when_pointed_at_a_pickle(shards, tmp_path):
    from pipeline.data.sample import CorruptSample, decode_sample

    marker = tmp_path / "pwned.txt"
    sample = _originals(shards)[0]
    doc = json.loads(sample["json"])
    doc["media"]["audio"] = "pyd"
    sample.update(json=json.dumps(doc).encode(), pyd=pickle.dumps(_WritesFile(marker)))
    try:
        decode_sample(sample)
        raise AssertionError("a pickle blob decoded as audio")
    except CorruptSample as exc:
        assert exc.reason == "bad_audio"
    assert not marker.exists()
    assert not allowed_file("x.pyd") and not allowed_file("x.pickle") and allowed_file("x.frames.jpg")


# ---- malformed sample json, one case per shape: (case, how the sample is damaged, the reason it is counted under) ----


def _doc(change):
    """A damage that edits the sample's parsed json with `change(doc)`."""

    def damage(sample: dict) -> None:
        doc = json.loads(sample["json"])
        change(doc)
        sample["json"] = json.dumps(doc).encode()

    return damage


def _raw(json_bytes: bytes):
    return lambda sample: sample.update(json=json_bytes)


def _set(path: str, value):
    """A damage that sets the dotted json field `path` (e.g. media.video) to `value`."""

    def change(doc: dict) -> None:
        *parents, last = path.split(".")
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = value

    return _doc(change)


def _drop(path: str):
    *parents, last = path.split(".")
    return _doc(lambda doc: _walk(doc, parents).pop(last))


def _walk(doc, parts):
    for part in parts:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def _predecoded(sample: dict) -> None:
    """The sample's video as the predecoded layout names it (an 8-frame strip: the test adds `strip.jpg`)."""
    _set("media.video", {"strip": "strip.jpg", "frames": 8})(sample)


def _then(*damages):
    def damage(sample: dict) -> None:
        for d in damages:
            d(sample)

    return damage


MALFORMED = [
    ("json-not-utf8", _raw(b"\xff\xfe{}"), "bad_json"),
    ("json-a-list", _raw(b"[1, 2]"), "bad_json"),
    ("json-null", _raw(b"null"), "bad_json"),
    ("conversations-missing", _drop("conversations"), "bad_field"),
    ("conversations-a-string", _set("conversations", "<video><audio> hi"), "bad_field"),
    ("conversations-empty", _set("conversations", []), "bad_field"),
    ("turn-a-string", _set("conversations.1", "three"), "bad_field"),
    ("turn-a-list", _set("conversations.1", ["gpt", "three"]), "bad_field"),
    ("turn-value-a-number", _set("conversations.1.value", 3), "bad_field"),
    ("turn-value-null", _set("conversations.1.value", None), "bad_field"),
    ("turn-value-a-list", _set("conversations.0.value", ["<video>", "<audio>"]), "bad_field"),
    ("turn-from-a-number", _set("conversations.0.from", 0), "bad_field"),
    ("turn-without-value", _drop("conversations.1.value"), "bad_field"),
    ("media-missing", _drop("media"), "bad_field"),
    ("media-a-list", _set("media", ["mp4", "wav"]), "bad_field"),
    ("media-a-string", _set("media", "mp4"), "bad_field"),
    ("video-a-list", _set("media.video", ["mp4"]), "bad_field"),
    ("video-a-number", _set("media.video", 4), "bad_field"),
    ("video-empty-key", _set("media.video", ""), "bad_field"),
    ("strip-without-key", _then(_predecoded, _set("media.video", {"frames": 8})), "bad_field"),
    ("frames-a-string", _then(_predecoded, _set("media.video.frames", "eight")), "bad_field"),
    ("frames-a-float", _then(_predecoded, _set("media.video.frames", 8.5)), "bad_field"),
    ("frames-zero", _then(_predecoded, _set("media.video.frames", 0)), "bad_field"),
    ("frames-a-bool", _then(_predecoded, _set("media.video.frames", True)), "bad_field"),
    ("frames-a-list", _then(_predecoded, _set("media.video.frames", [8])), "bad_field"),
    ("frames-the-strip-cannot-hold", _then(_predecoded, _set("media.video.frames", 7)), "bad_video"),
    ("audio-a-dict", _set("media.audio", {"key": "wav"}), "bad_field"),
    ("audio-null", _set("media.audio", None), "bad_field"),
    ("images-a-string", _set("media.images", "jpg"), "bad_field"),
    ("images-a-dict", _set("media.images", {"0": "jpg"}), "bad_field"),
    ("images-of-numbers", _set("media.images", [1]), "bad_field"),
    ("images-nested", _set("media.images", [["jpg"]]), "bad_field"),
    ("meta-a-string", _set("meta", "music"), "bad_field"),
    ("meta-a-list", _set("meta", ["music"]), "bad_field"),
    ("id-a-dict", _set("id", {"n": 1}), "bad_field"),
    ("source-a-number", _set("source", 7), "bad_field"),
    ("video-names-a-missing-entry", _set("media.video", "mkv"), "missing_media"),
    ("audio-names-a-missing-entry", _set("media.audio", "flac"), "missing_media"),
    ("images-name-a-missing-entry", _set("media.images", ["png"]), "missing_media"),
    ("strip-names-a-missing-entry", _then(_predecoded, _set("media.video.strip", "gone.jpg")), "missing_media"),
    ("mp4-empty", lambda s: s.update(mp4=b""), "bad_video"),
    ("wav-empty", lambda s: s.update(wav=b""), "bad_audio"),
    ("image-garbage", _then(lambda s: s.update(jpg=b"\x89PNG not really"), _set("media.images", ["jpg"])), "bad_image"),
    (
        "placeholder-without-medium",
        _set("conversations.0.value", "<video>\n<audio>\n<image>\nHow many?"),
        "placeholder_mismatch",
    ),
    ("medium-without-placeholder", _set("conversations.0.value", "How many beeps?"), "placeholder_mismatch"),
]


@pytest.fixture(scope="module")
def strip(shards) -> bytes:
    """A real predecoded 8-frame strip (jpg)."""
    tar = sorted(shards["music_avqa_predecoded"].glob("*.tar"))[0]
    sample = next(iter(wds.tarfile_samples([{"url": str(tar)}], select_files=allowed_file)))
    return sample["frames.jpg"]


@pytest.mark.parametrize("case, damage, reason", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_a_malformed_sample_is_skipped_and_counted_by_reason(shards, strip, tmp_path, case, damage, reason):
    """Each malformed shape, in a real tar beside good samples, through the real ShardLoader: never handed out,
    never a crash, counted under its reason alone; every step still runs."""
    from pipeline.data.sample import CorruptSample, decode_sample

    good = _originals(shards)[:3]
    bad = dict(good[0], __key__="malformed", **{"strip.jpg": strip})  # a real 8-frame strip, for the strip cases
    damage(bad)
    with pytest.raises(CorruptSample) as caught:
        decode_sample(dict(bad))
    assert caught.value.reason == reason, caught.value
    _write(tmp_path, "mixed-0.tar", [bad, *good])
    loader = ShardLoader(config(tmp_path, num_workers=0, micro_batch_size=1, shuffle_buffer=4), ids)
    seen = [k for batch in loader for k in batch["ids"]]
    assert "malformed" not in seen and len(seen) == loader.steps_per_epoch == 4
    assert set(loader.skipped) == {reason} and loader.skipped[reason] >= 1, loader.skipped
