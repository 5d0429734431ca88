"""`python -m launch.demo --out DIR [--fresh]` only ever writes into, or deletes, a directory the demo made."""

from __future__ import annotations

from launch.demo import MARKER, claim, main


def test_fresh_refuses_a_directory_the_demo_did_not_make(tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    assert main(["--out", str(home), "--fresh"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --out {home} is not empty and is not a demo output (no {MARKER} file); pick a new or " \
                  "empty directory\n"
    assert main(["--out", str(home)]) == 2  # nor is it written into without --fresh
    assert sorted(p.name for p in home.iterdir()) == ["thesis.tex"]
    assert main(["--out", str(home / "thesis.tex"), "--fresh"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert (home / "thesis.tex").read_text() == "years of work"


def test_fresh_empties_an_earlier_demo_output_and_marks_new_ones(tmp_path):
    out = tmp_path / "demo"
    claim(out, fresh=False)
    assert (out / MARKER).is_file()
    (out / "stage1").mkdir()
    claim(out, fresh=False)
    assert (out / "stage1").is_dir()  # without --fresh the earlier steps are kept (and skipped)
    claim(out, fresh=True)
    assert sorted(p.name for p in out.iterdir()) == [MARKER]
    empty = tmp_path / "empty"
    empty.mkdir()
    claim(empty, fresh=True)
    assert (empty / MARKER).is_file()
