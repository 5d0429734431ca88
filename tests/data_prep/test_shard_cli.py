import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from data_prep import shard
from tests.data_prep.conftest import N

EXPECTED = {"music_avqa": 4 * N, "ave": N, "llava": N, "audiocaps": N}


def _tar_names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


@pytest.mark.parametrize("source", sorted(EXPECTED))
def test_every_source_shards_with_an_index(raw, tmp_path, source):
    assert shard.main(["--source", source, "--root", str(raw[source]), "--split", "train", "--out", str(tmp_path),
                       "--maxcount", "5", "--workers", "2"]) == 0
    index = json.loads((tmp_path / f"{source}-train.index.json").read_text())
    assert index["total"] == EXPECTED[source] and index["skipped"] == {}
    assert [s["samples"] for s in index["shards"]][:-1] == [5] * (len(index["shards"]) - 1)
    assert sum(len({n.split(".")[0] for n in _tar_names(tmp_path / s["name"])}) for s in index["shards"]) == index["total"]
    assert not list(tmp_path.glob(".*tmp*"))


def test_bad_raw_input_is_skipped_and_counted(raw, tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    entries = json.loads((raw["music_avqa"] / "avqa-train.json").read_text())[:16]  # 4 clips, 4 questions each
    (root / "videos").mkdir()
    (root / "audio").mkdir()
    for e in entries:
        src = raw["music_avqa"] / "videos" / f"{e['video_id']}.mp4"
        (root / "videos" / src.name).write_bytes(src.read_bytes())
    entries[0] = {**entries[0], "video_id": "missing"}
    entries[1] = {**entries[1], "type": '["Taste", "Counting"]'}
    (root / "videos" / "broken.mp4").write_bytes(b"\x00not an mp4" * 50)
    entries[2] = {**entries[2], "video_id": "broken"}
    (root / "audio" / f"{entries[4]['video_id']}.wav").write_bytes(b"RIFF garbage")
    (root / "avqa-train.json").write_text(json.dumps(entries))
    index = shard.write_shards("music_avqa", root, "train", tmp_path / "out", progress=False)
    assert index["skipped"] == {"missing_video": 1, "unknown_question_type": 1, "unreadable_video": 1,
                                "unreadable_audio": 4}  # the garbage wav belongs to the 4 questions of one clip
    assert index["total"] == 9
    assert "missing.mp4" in index["skipped_examples"]["missing_video"]


def test_nothing_valid_fails_with_a_summary(tmp_path, capsys):
    (tmp_path / "train.csv").write_text("audiocap_id,youtube_id,start_time,caption\n1,y,0,A dog barks.\n")
    assert shard.main(["--source", "audiocaps", "--root", str(tmp_path), "--split", "train",
                       "--out", str(tmp_path / "o")]) == 2
    assert "no valid audiocaps/train samples" in capsys.readouterr().err
    assert not (tmp_path / "o" / "audiocaps-train.index.json").exists()


def test_predecode_stores_frames_and_16k_flac(raw, tmp_path):
    index = shard.write_shards("llava", raw["llava"], "test", tmp_path, predecode=True, num_frames=4, progress=False)
    names = [n for s in index["shards"] for n in _tar_names(tmp_path / s["name"])]
    assert not [n for n in names if n.endswith((".mp4", ".wav"))]
    assert any(n.endswith(".frames.jpg") for n in names) and any(n.endswith(".flac") for n in names)
    assert index["predecoded"] and index["num_frames"] == 4


def test_cli_entry_point(raw, tmp_path):
    out = subprocess.run([sys.executable, "-m", "data_prep.shard", "--source", "audiocaps", "--root",
                          str(raw["audiocaps"]), "--split", "test", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert "audiocaps/test: 4 samples in 1 shards" in out.stdout


def _llava_as_downloaded(tmp_path: Path) -> tuple[Path, Path]:
    """LLaVA-1.5's layout: `llava_v1_5_mix665k.json` in one folder, images under another (`--image_folder`), the
    json naming each image relative to it; one text-only conversation, one image that is not there."""
    from data_prep import render

    images = tmp_path / "playground" / "data"
    render.write_jpg(images / "coco/train2017/000000033471.jpg", render.frame("red", "left", 22))
    render.write_jpg(images / "gqa/images/2354786.jpg", render.frame("blue", "right", 10))
    turns = [{"from": "human", "value": "What colour is the shape?"}, {"from": "gpt", "value": "Red."}]
    entries = [
        {"id": "000000033471", "image": "coco/train2017/000000033471.jpg", "conversations": turns},
        {"id": "2354786", "image": "gqa/images/2354786.jpg", "conversations": turns},
        {"id": "i6IyJda_0", "model": "", "conversations": [{"from": "human", "value": "Hi"},
                                                            {"from": "gpt", "value": "Hello."}]},
        {"id": "missing", "image": "vg/VG_100K/1.jpg", "conversations": turns},
    ]
    annotations = tmp_path / "annotations" / "llava_v1_5_mix665k.json"
    annotations.parent.mkdir()
    annotations.write_text(json.dumps(entries))
    return annotations, images


def test_llava_json_and_media_dir_as_downloaded(tmp_path):
    annotations, images = _llava_as_downloaded(tmp_path)
    out = tmp_path / "shards"
    assert shard.main(["--source", "llava", "--json", str(annotations), "--media-dir", str(images), "--split", "train",
                       "--out", str(out)]) == 0
    index = json.loads((out / "llava-train.index.json").read_text())
    assert index["total"] == 3 and index["modalities"] == {"images": 2}
    assert index["skipped"] == {"missing_image": 1}
    assert "vg/VG_100K/1.jpg" in index["skipped_examples"]["missing_image"]
    names = _tar_names(out / index["shards"][0]["name"])
    assert sum(n.endswith(".jpg") for n in names) == 2 and sum(n.endswith(".json") for n in names) == 3


def test_llava_json_defaults_its_media_dir_to_its_folder(raw, tmp_path):
    entries = json.loads((raw["llava"] / "train.json").read_text())
    annotations = raw["llava"] / "renamed-mix.json"  # any name, beside its media
    annotations.write_text(json.dumps(entries))
    try:
        index = shard.write_shards("llava", raw["llava"], "train", tmp_path, progress=False, annotations=annotations)
    finally:
        annotations.unlink()
    assert index["total"] == N and index["skipped"] == {}


def test_single_file_input_errors_name_the_flag(tmp_path, capsys):
    annotations, images = _llava_as_downloaded(tmp_path)
    assert shard.main(["--source", "audiocaps", "--json", str(annotations), "--split", "train",
                       "--out", str(tmp_path / "o")]) == 2
    assert "--json: audiocaps reads its raw layout from --root; a single annotation file is for llava" in \
        capsys.readouterr().err
    assert shard.main(["--source", "llava", "--json", str(annotations), "--media-dir", str(tmp_path / "nowhere"),
                       "--split", "train", "--out", str(tmp_path / "o")]) == 2
    assert f"{tmp_path / 'nowhere'}: the media folder does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        shard.main(["--source", "llava", "--root", str(tmp_path), "--media-dir", str(images), "--split", "train",
                    "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2 and "--media-dir goes with --json" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_audiocaps_clips_as_downloaders_name_them(tmp_path):
    """Clips named by audiocap_id, youtube_id, or youtube_id_start (int or float), wav or flac, all found as they
    are; a row with none says which names were tried."""
    import soundfile as sf

    from data_prep import render

    wave = render.waveform(1.0, [render.Beep(start=0.1, length=0.2)])
    audio = tmp_path / "audio"
    render.write_wav(audio / "91139.wav", wave)
    render.write_wav(audio / "ytB.wav", wave)
    render.write_wav(audio / "ytC_30.wav", wave)
    audio.mkdir(exist_ok=True)
    sf.write(audio / "ytD_30.000.flac", wave, render.SAMPLE_RATE, format="FLAC")
    render.write_wav(audio / "ytE_12.5.wav", wave)
    rows = [("91139", "ytA", "0"), ("2", "ytB", "10"), ("3", "ytC", "30"), ("4", "ytD", "30"), ("5", "ytE", "12.5"),
            ("6", "ytF", "40")]
    (tmp_path / "val.csv").write_text("audiocap_id,youtube_id,start_time,caption\n"
                                      + "".join(f"{a},{y},{s},A beep.\n" for a, y, s in rows))
    index = shard.write_shards("audiocaps", tmp_path, "val", tmp_path / "out", progress=False)
    assert index["total"] == 5 and index["skipped"] == {"missing_audio": 1}
    assert index["skipped_examples"]["missing_audio"] == (
        f"{tmp_path / 'val.csv'}:7: no clip in {audio} named 6{{.wav,.flac}}, ytF{{.wav,.flac}}, "
        "ytF_40{.wav,.flac}, ytF_40.0{.wav,.flac}, ytF_40.000{.wav,.flac}")
    names = _tar_names(tmp_path / "out" / index["shards"][0]["name"])
    assert sum(n.endswith(".wav") for n in names) == 4 and sum(n.endswith(".flac") for n in names) == 1


@pytest.mark.parametrize("flags, message", [
    (["--workers", "0"], "--workers must be at least 1, got 0"),
    (["--maxcount", "0"], "--maxcount must be at least 1, got 0"),
    (["--num-frames", "0", "--predecode"], "--num-frames must be at least 1, got 0"),
    (["--out", "FILE"], "[Errno 17] File exists"),  # an OSError (here: --out is a file), not a traceback
])
def test_bad_flags_and_unwritable_out_are_one_line(raw, tmp_path, capsys, flags, message):
    afile = tmp_path / "a-file"
    afile.write_text("mine")
    argv = ["--source", "audiocaps", "--root", str(raw["audiocaps"]), "--split", "train", "--out", str(tmp_path / "o")]
    argv += [str(afile) if f == "FILE" else f for f in flags]
    assert shard.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert afile.read_text() == "mine"


@pytest.mark.parametrize("module", ["data_prep.synthetic", "data_prep.synthetic_bench"])
def test_synthetic_clis_bad_n_and_unwritable_out_are_one_line(tmp_path, capsys, module):
    import importlib

    main = importlib.import_module(module).main
    assert main(["--out", str(tmp_path / "s"), "--n", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --n must be at least")
    afile = tmp_path / "a-file"
    afile.write_text("mine")
    assert main(["--out", str(afile), "--n", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(afile) in err, err
