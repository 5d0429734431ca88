"""Bad inputs fail with one line naming the culprit, before any model is loaded; the real official files load."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from pipeline.eval.runner import main
from pipeline.eval import ave, mme, music_avqa, pope
from pipeline.eval.bench import CONDITIONS
from pipeline.eval.generate import build_sample, rank_batches
from pipeline.model.avllm import AVLLM
from tests.eval.conftest import SHARED
from tests.eval.test_scorers import row, write_tsv


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    """Any attempt to load a model fails the test: every error here must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(AVLLM, "from_pretrained", refuse)


def error_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ")
    return err


def test_tsv_missing_a_column(tmp_path, capsys, checkpoint):
    tsv = write_tsv(tmp_path / "mmb.tsv", [row(1, "A", "pets")], drop="category")
    err = error_line(capsys, ["--model", str(checkpoint), "--bench", "mmbench", "--data", str(tsv)])
    assert err == f"error: {tsv}: the MMBench TSV lacks the column(s) category"


def test_image_path_that_does_not_exist(tmp_path, capsys, checkpoint, bench_data):
    data = Path(bench_data["pope"][1])
    err = error_line(capsys, ["--model", str(checkpoint), "--bench", "pope", "--data", str(data),
                              "--media-root", str(tmp_path)])
    assert err.startswith(f"error: pope image not found: {tmp_path}/COCO_val2014_") and "question_id" in err
    assert "missing in all" in err


def test_predictions_with_unknown_ids(tmp_path, capsys, bench_data):
    predictions = tmp_path / "predictions.jsonl"
    lines = [{"question_id": q, "text": "yes"} for q in (17, 18, 999, 1000)]  # test ids: 17-32 (train has 16)
    predictions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    err = error_line(capsys, ["--bench", "music_avqa", *bench_data["music_avqa"], "--predictions", str(predictions)])
    assert err == f"error: {predictions}: 2 prediction(s) with unknown ids: question_id=999, question_id=1000"


@pytest.mark.parametrize("lines, message", [
    ([{"question_id": 17}], "not a prediction line"),
    ([{"question_id": 17, "text": "a"}, {"question_id": 17, "text": "b"}], "1 id(s) predicted twice: question_id=17"),
    ([{"question_id": 17, "text": "a"}],
     "no prediction for 15 item(s): question_id=18, question_id=19, question_id=20, ..."),
])
def test_predictions_file_problems(tmp_path, capsys, bench_data, lines, message):
    predictions = tmp_path / "p.jsonl"
    predictions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert message in error_line(capsys, ["--bench", "music_avqa", *bench_data["music_avqa"],
                                          "--predictions", str(predictions)])


@pytest.mark.parametrize("extra, message", [
    (["--missing", "audio", "--missing-rate", "0.5"], "--missing audio: pope has no audio input"),
    (["--missing", "visual"], "--missing and --missing-rate go together"),
    (["--missing", "visual", "--missing-rate", "1.5"], "--missing-rate must be in (0, 1]"),
    (["--missing-grid"], "--missing-grid needs --missing-rate in (0, 1] (η of the mixed condition), got None"),
    (["--missing-grid", "--missing-rate", "0"], "--missing-grid needs --missing-rate in (0, 1]"),
    (["--missing-grid", "--missing-rate", "0.5", "--missing", "visual"], "--missing-grid runs every condition"),
])
def test_bad_options(capsys, checkpoint, bench_data, extra, message):
    argv = ["--model", str(checkpoint), "--bench", "pope", *bench_data["pope"], *extra]
    assert message in error_line(capsys, argv)


def test_grid_needs_a_model_and_a_modality_to_take_away(capsys, checkpoint, bench_data, tmp_path, monkeypatch):
    grid = ["--bench", "pope", *bench_data["pope"], "--missing-grid", "--missing-rate", "0.5"]
    err = error_line(capsys, [*grid, "--predictions", str(tmp_path / "p.jsonl")])
    assert err == "error: --missing-grid runs the model once per test condition; it cannot score --predictions"
    monkeypatch.setattr(pope, "MODALITIES", frozenset())
    err = error_line(capsys, [*grid, "--model", str(checkpoint)])
    assert err == "error: --missing-grid: pope has neither audio nor visual input to take away"


def test_not_a_checkpoint(tmp_path, capsys, bench_data):
    err = error_line(capsys, ["--model", str(tmp_path), "--bench", "mme", *bench_data["mme"]])
    assert err == f"error: {tmp_path}: not an AVLLM checkpoint (no avllm.json)"


def test_missing_video_and_mme_image_stop_a_model_run(tmp_path, capsys, bench_data, checkpoint):
    err = error_line(capsys, ["--bench", "music_avqa", *bench_data["music_avqa"], "--media-root", str(tmp_path),
                              "--model", str(checkpoint)])
    assert err.startswith(f"error: music_avqa video not found: {tmp_path}/videos/") and "question_id=" in err
    err = error_line(capsys, ["--bench", "mme", *bench_data["mme"], "--media-root", str(tmp_path),
                              "--model", str(checkpoint)])
    assert err.startswith(f"error: mme image not found: {tmp_path}/color/")


GOLD_TEXT = {  # an answer each benchmark's parser reads as the gold one
    "music_avqa": lambda gold: gold["answer"],
    "pope": lambda gold: gold["label"].capitalize() + ".",
    "ave": lambda gold: f"{gold['category']}, from second {gold['start']} to second {gold['end']}.",
}


@pytest.mark.parametrize("bench", sorted(GOLD_TEXT))
def test_scoring_predictions_needs_no_media(tmp_path, capsys, bench_data, bench):
    """Only the annotation files are copied: no image, video or audio is on disk, and the file still scores."""
    source = Path(bench_data[bench][1])
    data = tmp_path / "annotations" / source.name
    if source.is_dir():
        data.mkdir(parents=True)
        for f in source.iterdir():
            if f.is_file():
                (data / f.name).write_bytes(f.read_bytes())
    else:
        data.parent.mkdir()
        data.write_bytes(source.read_bytes())
    assert not [f for f in (tmp_path / "annotations").rglob("*") if f.suffix in (".mp4", ".wav", ".jpg", ".png")]
    module = {"music_avqa": music_avqa, "pope": pope, "ave": ave}[bench]
    items = module.load(data)
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps({**i.fields, "text": GOLD_TEXT[bench](i.gold)}) + "\n" for i in items))
    assert main(["--bench", bench, "--data", str(data), "--predictions", str(predictions),
                 "--out", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]["complete"]
    assert len(items) >= 4 and module.headline(metrics) == 1.0, metrics


def test_dropping_a_modality_removes_media_and_placeholder(bench_data):
    items = music_avqa.load(Path(bench_data["music_avqa"][1]))
    with_track = next(i for i in items if i.soundtrack)      # audio from the mp4's own track
    full = build_sample(with_track, 4, CONDITIONS["complete"])
    assert full.conversations[0]["value"].startswith("<video>\n<audio>\n") and full.audio is not None
    no_audio = build_sample(with_track, 4, CONDITIONS["audio-missing"])
    assert no_audio.audio is None and "<audio>" not in no_audio.conversations[0]["value"]
    no_video = build_sample(items[1], 4, CONDITIONS["visual-missing"])
    assert no_video.video is None and no_video.conversations[0]["value"].startswith("<audio>\n")


def test_batches_are_the_same_on_any_number_of_ranks():
    single = rank_batches(10, 3, 0, 1)
    spread = [rank_batches(10, 3, r, 2) for r in range(2)]
    assert sorted(spread[0] + spread[1], key=lambda r: r.start) == single == [range(0, 3), range(3, 6), range(6, 9),
                                                                              range(9, 10)]


needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} (the shared official annotation files) "
                                                               "is absent in this clone")


def touch(paths: set[Path]) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


@needs_shared
def test_real_music_avqa_file(tmp_path):
    data = SHARED / "music-avqa" / "avqa-test.json"
    entries = json.loads(data.read_text())
    touch({tmp_path / "videos" / f"{e['video_id']}.mp4" for e in entries})
    items = music_avqa.load(data, tmp_path)
    assert len(items) == 9129 and all(i.soundtrack for i in items)
    first = next(i for i in items if i.fields["question_id"] == 28)
    assert first.prompt == "Is the violin in the video always playing?" and first.gold["answer"] == "no"
    assert not any("<" in i.prompt for i in items)
    golds = [i.gold["answer"] for i in items]
    assert music_avqa.score(items, golds)["overall"] == 1.0
    spaced = [g.replace("_", " ") for g in golds]                     # "acoustic guitar" for acoustic_guitar
    metrics = music_avqa.score(items, spaced)
    assert metrics["overall"] == 1.0 and metrics["unparsable"] == 0.0
    assert Counter(i.gold["subtype"] for i in items)["Audio-Visual/Temporal"] == 822
    assert list(metrics["subtype"]) == list(music_avqa.SUBTYPES)


@needs_shared
def test_real_pope_files(tmp_path):
    folder = SHARED / "pope"
    images = {json.loads(line)["image"] for path in folder.glob("coco_pope_*.json")
              for line in path.read_text().splitlines()}
    touch({tmp_path / name for name in images})
    items = pope.load(folder, tmp_path)
    assert len(items) == 9000 and Counter(i.fields["split"] for i in items)["adversarial"] == 3000
    metrics = pope.score(items, ["No." if i.gold["label"] == "no" else "Yes" for i in items])
    assert all(m["accuracy"] == 1.0 for m in metrics.values())
    always_yes = pope.score(items, ["Yes, there is."] * len(items))
    assert always_yes["random"] == {"accuracy": 0.5, "precision": 0.5, "recall": 1.0, "f1": 2 / 3, "yes_ratio": 1.0}


def test_mme_layouts(bench_data, tmp_path):
    """The release layout (nested and flat) and the eval_tool lists give the same items."""
    release = Path(bench_data["mme"][1])
    items = mme.load(release)
    assert Counter(i.gold["task"] for i in items) == {"color": 8, "artwork": 8, "code_reasoning": 8}
    assert items[0].image.is_file() and items[0].gold["answer"] == "yes"
    for task in ("color", "artwork", "code_reasoning"):
        (tmp_path / f"{task}.txt").write_text("".join(f"{i.image.name}\t{i.prompt}\t{i.gold['answer']}\n"
                                                      for i in items if i.gold["task"] == task))
    listed = mme.load(tmp_path, release)
    assert [(i.image, i.prompt, i.gold) for i in listed] == [(i.image, i.prompt, i.gold) for i in items]


def test_read_only_out_fails_before_the_model_loads(capsys, checkpoint, bench_data, small_disk):
    out = small_disk(64, read_only=True) / "eval"
    err = error_line(capsys, ["--model", str(checkpoint), "--bench", "pope", *bench_data["pope"], "--out", str(out)])
    assert err == f"error: {out}: cannot create it (Read-only file system); write elsewhere"


@pytest.mark.parametrize("change, message", [
    ({"anser": None}, "'anser' (the gold answer) is None; an answer string is needed"),
    ({"anser": ""}, "'anser' (the gold answer) is ''"),
    ({"anser": None, "drop": True}, "'anser' (the gold answer) is None"),
])
def test_music_avqa_question_without_a_gold_answer_is_one_line(tmp_path, capsys, checkpoint, change, message):
    """Never scored against the answer "None": the question is named and nothing is loaded."""
    entry = {"video_id": "v1", "question_id": 7, "type": '["Audio", "Counting"]', "question_content": "How many?",
             "templ_values": "[]", "question_deleted": 0, "anser": "one"}
    entry.update({k: v for k, v in change.items() if k != "drop"})
    if change.get("drop"):
        entry.pop("anser")
    data = tmp_path / "avqa-test.json"
    data.write_text(json.dumps([entry]))
    err = error_line(capsys, ["--model", str(checkpoint), "--bench", "music_avqa", "--data", str(data)])
    assert err.startswith(f"error: {data}: question_id 7: ") and message in err


def test_pope_line_with_a_null_text_or_image_is_one_line(tmp_path, capsys, checkpoint):
    data = tmp_path / "coco_pope_random.json"
    data.write_text(json.dumps({"question_id": 1, "image": None, "text": "Is there a cat?", "label": "yes"}) + "\n")
    err = error_line(capsys, ["--model", str(checkpoint), "--bench", "pope", "--data", str(data)])
    assert err == f"error: {data}:1: text and image must be strings, got 'Is there a cat?' and None"


def test_out_that_is_a_file_is_one_line(tmp_path, capsys, checkpoint, bench_data):
    afile = tmp_path / "results.txt"
    afile.write_text("mine")
    err = error_line(capsys, ["--model", str(checkpoint), "--bench", "pope", *bench_data["pope"], "--out", str(afile)])
    assert err == f"error: --out {afile} is a file; name a directory for the results"
    assert afile.read_text() == "mine"
