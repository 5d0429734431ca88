import json
from collections import Counter
from pathlib import Path

import pytest

from data_prep import audiocaps, ave, llava, music_avqa
from data_prep.record import Record, Skip, build_sample
from pipeline.formats import ave as ave_format
from pipeline.formats import music_avqa as music_avqa_format
from tests.data_prep.conftest import N

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "music-avqa"


def _records(items):
    return [r for r in items if isinstance(r, Record)]


@pytest.fixture(scope="module")
def real_entries():
    if not (REAL / "avqa-test.json").exists():
        pytest.skip(f"official MUSIC-AVQA annotations not found at {REAL}")
    entries = json.loads((REAL / "avqa-test.json").read_text()) + json.loads((REAL / "avqa-val.json").read_text())
    return {e["question_id"]: e for e in entries}


@pytest.mark.parametrize("qid, expected", [
    (95, "Is the instrument on the right more rhythmic than the instrument on the left?"),
    (3952, "Is the banjo on the left more rhythmic than the acoustic_guitar on the right?"),
    (4317, "Which instrument makes sounds before the violin?"),
    (35, "How many sounding violin in the video?"),
    (4639, "What is the left instrument of the first sounding instrument?"),
    (4829, "What kind of instrument is the rightest instrument?"),
    (1464, "What is the third instrument that comes in?"),
    (224, "Where is the loudest instrument?"),
    (4457, "Which bassoon makes the sound last?"),
    (12, "How many musical instruments were heard throughout the video?"),
])
def test_music_avqa_template_filling_on_official_entries(real_entries, qid, expected):
    question, qtype, answer = music_avqa_format.parse_entry(real_entries[qid])
    assert question == expected
    assert tuple(qtype) in music_avqa_format.QUESTION_TYPES
    assert answer == real_entries[qid]["anser"]


def test_music_avqa_official_file_parses_completely(real_entries, tmp_path):
    (tmp_path / "avqa-test.json").write_text((REAL / "avqa-test.json").read_text())
    items = list(music_avqa.records(tmp_path, "test"))
    assert len(_records(items)) == 9129 and not [s for s in items if isinstance(s, Skip)]
    assert not any("<" in r.meta["question"] for r in _records(items))
    assert all(r.audio_from_video for r in _records(items))  # no audio/ folder: fall back to the mp4 track


def test_music_avqa_placeholder_count_mismatch_is_malformed():
    with pytest.raises(ValueError, match="2 placeholders but 1 templ_values"):
        music_avqa_format.fill_template("Is the <Object> louder than the <Object>?", ["piano"])


def test_music_avqa_bad_entries_are_skipped_with_reasons(tmp_path):
    good = {"video_id": "1", "question_id": 1, "type": '["Audio", "Counting"]', "question_content": "How many?",
            "templ_values": "[]", "question_deleted": 0, "anser": "one"}
    entries = [good, {**good, "question_id": 2, "type": '["Smell", "Counting"]'},
               {**good, "question_id": 3, "templ_values": "not json"}, {**good, "question_id": 4, "question_deleted": 1},
               {**good, "question_id": 5, "anser": None}, {**good, "question_id": 6, "anser": ""},
               {k: v for k, v in good.items() if k != "anser"} | {"question_id": 7}, {**good, "question_id": 8,
               "anser": ["one"]}, {**good, "question_id": 9, "video_id": None}, {**good, "question_id": 10,
               "type": '[["Audio"], "Counting"]'}, {**good, "question_id": 11, "question_content": 3}]
    (tmp_path / "avqa-train.json").write_text(json.dumps(entries))
    items = list(music_avqa.records(tmp_path, "train"))
    assert len(_records(items)) == 1
    assert Counter(s.reason for s in items if isinstance(s, Skip)) == {
        "unknown_question_type": 2, "malformed_entry": 3, "question_deleted": 1, "no_answer": 4}
    assert next(s for s in items if s.id == "5").detail.endswith("'anser' (the gold answer) is None; an answer "
                                                                 "string is needed")
    (tmp_path / "avqa-val.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ValueError, match="must be a list of questions"):
        list(music_avqa.records(tmp_path, "val"))


def test_music_avqa_synthetic(raw):
    items = _records(music_avqa.records(raw["music_avqa"], "train"))
    assert len(items) == 4 * N
    types = Counter(tuple(r.meta["type"]) for r in items)
    assert types == {("Audio", "Counting"): N, ("Visual", "Location"): N, ("Audio-Visual", "Temporal"): N,
                     ("Audio", "Comparative"): N}
    louder = [r for r in items if r.meta["type"] == ["Audio", "Comparative"]]
    assert {r.meta["question"] for r in louder} == {"Is the hum louder than the beeps?",
                                                    "Is the beeps louder than the hum?"}
    colour = [r for r in items if r.meta["type"] == ["Visual", "Location"]]
    assert Counter(r.meta["answer"] for r in colour) == {"red": 2, "green": 2, "blue": 2, "yellow": 2}
    assert all(r.conversations[0]["value"].startswith("<video>\n<audio>\n") for r in items)
    assert any(r.audio_from_video for r in items) and any(r.audio is not None for r in items)
    test = _records(music_avqa.records(raw["music_avqa"], "test"))
    assert not {r.meta["video_id"] for r in test} & {r.meta["video_id"] for r in items}


def test_soundtrack_is_taken_from_the_mp4_when_no_wav(raw):
    record = next(r for r in _records(music_avqa.records(raw["music_avqa"], "train")) if r.audio_from_video)
    sample = build_sample(record)
    assert set(sample) == {"__key__", "json", "mp4", "wav"}
    assert json.loads(sample["json"])["media"] == {"video": "mp4", "audio": "wav"}


def test_ave_lines_and_ranges(raw):
    assert ave_format.parse_line("Church bell&RUhOCu3LNXM&good&0&10") == ("Church bell", "RUhOCu3LNXM", 0, 10)
    assert ave_format.answer_text("Violin, fiddle", 2, 6) == "Violin, fiddle, from second 2 to second 6."
    with pytest.raises(ValueError, match="outside 0-10"):
        ave_format.parse_line("Bark&x&good&4&12")
    with pytest.raises(LookupError, match="unknown event category"):
        ave_format.parse_line("Doorbell&x&good&1&2")
    assert len(ave_format.CATEGORIES) == 28
    items = _records(ave.records(raw["ave"], "train"))
    assert len(items) == N
    for r in items:
        m = r.meta
        assert 0 <= m["start"] < m["end"] <= 10
        assert r.conversations[1]["value"] == f"{m['category']}, from second {m['start']} to second {m['end']}."
    lines = (raw["ave"] / "trainSet.txt").read_text().splitlines()
    assert lines[0] == "Category&VideoID&Quality&StartTime&EndTime" and len(lines) == N + 1


def test_ave_bad_lines_are_skipped(tmp_path):
    (tmp_path / "testSet.txt").write_text("Category&VideoID&Quality&StartTime&EndTime\nBark&a&good&1&3\nBark&b&good\n"
                                          "Doorbell&c&good&1&2\n")
    items = list(ave.records(tmp_path, "test"))
    assert [r.id for r in _records(items)] == ["a"]
    assert sorted(s.reason for s in items if isinstance(s, Skip)) == ["malformed_line", "unknown_category"]


def test_llava_synthetic_and_placeholder_prepending(raw, tmp_path):
    items = _records(llava.records(raw["llava"], "train"))
    assert len(items) == N
    kinds = Counter("image" if r.images else "video" if r.video else "audio" for r in items)
    assert set(kinds) == {"image", "video", "audio"}
    (tmp_path / "x.jsonl").write_text('{"id": 1, "image": "a.jpg", "conversations": [{"from": "human", "value": "Hi"},'
                                      ' {"from": "gpt", "value": "A cat."}]}\n{broken\n{"id": 2, "conversations": []}\n'
                                      '{"id": 3, "image": 5, "conversations": [{"from": "human", "value": "Hi"}]}\n'
                                      '{"id": 4, "video": ["a.mp4"], "conversations": '
                                      '[{"from": "human", "value": "Hi"}]}\n')
    items = list(llava.records(tmp_path, "x"))
    assert _records(items)[0].conversations[0]["value"] == "<image>\nHi"
    assert sorted(s.reason for s in items if isinstance(s, Skip)) == ["malformed_entry"] * 3 + ["malformed_json"]
    assert any("'image' must be a file path, got 5" in s.detail for s in items if isinstance(s, Skip))


def test_audiocaps_synthetic(raw):
    items = _records(audiocaps.records(raw["audiocaps"], "train"))
    assert len(items) == N
    assert all(r.audio.exists() and r.conversations[0]["value"].startswith("<audio>\n") for r in items)
    assert all(r.conversations[1]["value"].endswith(("beep.", "beeps.")) for r in items)


def test_synthetic_soundtrack_is_aligned_with_the_frames(tmp_path):
    """The AAC track's priming samples are dropped on decode: a beep at 0.5 s is heard at 0.5 s."""
    import av
    import numpy as np

    from data_prep import render

    clip = render.Clip(duration=2.0, colour="red", beeps=[render.Beep(start=0.5, length=0.1)])
    render.write_mp4(tmp_path / "a.mp4", clip)
    with av.open(str(tmp_path / "a.mp4")) as box:
        wave = np.concatenate([f.to_ndarray()[0] for f in box.decode(box.streams.audio[0])])
    onset = np.argmax(np.convolve(np.abs(wave), np.ones(160) / 160, "same") > 0.2) / render.SAMPLE_RATE
    assert abs(onset - 0.5) < 0.01
