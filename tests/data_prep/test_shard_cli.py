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
