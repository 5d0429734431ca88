"""launch/compare.py: a 2-adapter × 1-seed grid on the tiny model, resumed without redoing a finished cell."""

from __future__ import annotations

import csv
import json

import pytest

from pipeline.compare import runner as compare
from pipeline.compare.table import Cell, aggregate, markdown

pytestmark = pytest.mark.slow


def grid_args(train_data, bench_data, stage1_run, out, adapters: str, seeds: str = "0") -> list[str]:
    comp = train_data["components"]
    return ["--config", "configs/demo/stage2.yaml", "--stage1-run", str(stage1_run), "--adapters", adapters,
            "--seeds", seeds, "--bench", "music_avqa", *bench_data["music_avqa"], "--out", str(out), "--nproc", "1",
            "--batch-size", "8", "--max-new-tokens", "4",
            f"model.llm={comp / 'llm'}", f"model.vision={comp / 'vision'}", f"model.audio={comp / 'audio'}",
            f"data.root={train_data['shards']}", "data.micro_batch_size=4", "data.shuffle_buffer=16", "max_steps=3",
            "train.dominance_every=3"]


def snapshot(directory) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in directory.rglob("*") if p.is_file()}


def test_grid_writes_both_rows_and_resumes_without_redoing_a_finished_cell(train_data, bench_data, stage1_run,
                                                                         tmp_path, monkeypatch):
    monkeypatch.chdir(compare.REPO)
    out = tmp_path / "grid"
    assert compare.main(grid_args(train_data, bench_data, stage1_run, out, "lora")) == 0
    first = snapshot(out / "lora-seed0")
    assert {"run/final/trainables.safetensors", "merged/merge.json", "eval/metrics.json"} <= first.keys()

    # the grid grows by one adapter: the finished LoRA cell is read back, not retrained, merged or evaluated again
    assert compare.main(grid_args(train_data, bench_data, stage1_run, out, "lora,imod")) == 0
    assert snapshot(out / "lora-seed0") == first
    with (out / "comparison.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["adapter"] for r in rows] == ["lora", "imod"]
    for row in rows:
        assert 0 <= float(row["overall_mean"]) <= 1 and row["overall_std"] == ""
        assert int(row["adapter_params"]) > 0 and int(row["trainable_params"]) > int(row["adapter_params"])
        assert float(row["step_time_s_median"]) > 0 and row["merged"] == "True"
        assert 0 <= float(row["nontext_dominance_mean"]) <= 1
    assert rows[0]["trainable_params"] == rows[1]["trainable_params"]  # IMoD's masks are buffers, not parameters
    table = (out / "comparison.md").read_text().splitlines()
    assert table[0].startswith("| adapter | seeds | music_avqa overall |")
    assert [line.split("|")[1].strip() for line in table[2:]] == ["lora", "imod"]
    assert json.loads((out / "imod-seed0" / "merged" / "merge.json").read_text())["adapter"]["name"] == "imod"

    # a finished cell is not silently reused under another recipe
    changed = grid_args(train_data, bench_data, stage1_run, out, "lora") + ["optim.lr=5e-4"]
    assert compare.main(changed) == 2
    assert snapshot(out / "lora-seed0") == first


@pytest.mark.parametrize("change, message", [
    (["--adapters", "lora,nope"], "--adapters: unknown adapter 'nope'"),
    (["--seeds", "0,x"], "--seeds: '0,x' must be comma-separated integers"),
    (["--seeds", "0,0"], "--seeds: '0,0' must be a comma-separated list of distinct"),
    (["--stage1-run", "/nonexistent/stage1"], "--stage1-run: /nonexistent/stage1 is not a run directory"),
    (["seed=3"], "override 'seed=3': adapter.name, seed, stage1_run, output_dir, resume are set per cell"),
    (["--nproc", "0"], "--nproc: must be at least 1, got 0"),
    (["--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
    (["--max-new-tokens", "-1"], "--max-new-tokens: must be at least 1, got -1"),
])
def test_bad_input_fails_in_one_line_before_training(train_data, bench_data, tmp_path, capsys, monkeypatch,
                                                      change, message):
    monkeypatch.chdir(compare.REPO)
    args = grid_args(train_data, bench_data, tmp_path / "stage1", tmp_path / "grid", "lora")
    (tmp_path / "stage1").mkdir()
    (tmp_path / "stage1" / "config.yaml").touch()  # gets past the first check; the stage-1 check comes after names
    for i in range(0, len(change) - 1, 2):
        if change[i].startswith("--"):
            args[args.index(change[i]) + 1] = change[i + 1]
    if not change[0].startswith("--"):
        args += change
    assert compare.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and "\n" not in err
    assert not (tmp_path / "grid").exists()


def test_train_missing_grid_tabulates_train_by_test_condition_and_resumes(train_data, bench_data, stage1_run,
                                                                          tmp_path, monkeypatch):
    monkeypatch.chdir(compare.REPO)
    out = tmp_path / "grid"
    argv = ["--train-missing", "complete,audio", "--missing-rate", "0.5",
            *grid_args(train_data, bench_data, stage1_run, out, "lora")]
    assert compare.main(argv) == 0
    recorded = {name: json.loads((out / name / "merged" / "merge.json").read_text())["missing"]
                for name in ("lora-complete-seed0", "lora-audio-seed0")}
    assert recorded["lora-complete-seed0"]["rate"] == 0
    assert {k: recorded["lora-audio-seed0"][k] for k in ("rate", "type", "fill")} == {
        "rate": 0.5, "type": "audio", "fill": "drop"}
    report = json.loads((out / "lora-audio-seed0" / "run" / "data_report.json").read_text())
    assert report["missing_modality"]["audio"] > 0 and "visual" not in report["missing_modality"]
    with (out / "comparison_missing.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["adapter"], r["train_condition"]) for r in rows] == [("lora", "complete"),
                                                                    ("lora", "audio-missing at η=0.5")]
    for row, name in zip(rows, ("lora-complete-seed0", "lora-audio-seed0")):
        result = json.loads((out / name / "eval" / "metrics.json").read_text())
        assert list(result["metrics"]) == ["complete", "audio-missing", "visual-missing", "mixed"]
        for test in result["metrics"]:
            assert float(row[f"{test}_headline_mean"]) == pytest.approx(result["headline"][test])
        complete, audio = result["headline"]["complete"], result["headline"]["audio-missing"]
        assert row["audio-missing_drop_mean"] == ("" if not complete else pytest.approx((complete - audio) / complete))
    table = (out / "comparison_missing.md").read_text()
    assert "| adapter | train condition | seeds | complete | audio-missing | drop audio-missing (%) | visual-missing " \
        "| drop visual-missing (%) | mixed | drop mixed (%) |" in table
    assert [line.split("|")[1].strip() for line in (out / "comparison.md").read_text().splitlines()[2:]] == [
        "lora (complete)", "lora (audio)"]

    # resumed: every cell is read back, not redone, and the tables are the same
    first, tables = snapshot(out), {name: (out / name).read_text() for name in ("comparison_missing.md",
                                                                                 "comparison_missing.csv")}
    assert compare.main(argv) == 0
    assert {k: v for k, v in snapshot(out).items() if "/" in k} == {k: v for k, v in first.items() if "/" in k}
    assert tables == {name: (out / name).read_text() for name in tables}


@pytest.mark.parametrize("flags, message", [
    (["--train-missing", "complete,nope", "--missing-rate", "0.5"], "--train-missing: unknown condition 'nope'"),
    (["--train-missing", "audio"], "--missing-rate: --train-missing needs η in (0, 1], got None"),
    (["--missing-rate", "0.5"], "--missing-rate: goes with --train-missing"),
    (["--missing-fill", "placeholder"], "--missing-fill: goes with --train-missing"),
    (["--train-missing", "audio", "--missing-rate", "0.5"], "override 'missing.rate=0.3': "),
])
def test_bad_train_missing_fails_in_one_line(train_data, bench_data, tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.chdir(compare.REPO)
    argv = [*flags, *grid_args(train_data, bench_data, tmp_path / "stage1", tmp_path / "grid", "lora")]
    assert compare.main(argv + (["missing.rate=0.3"] if "override" in message else [])) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and "\n" not in err
    assert not (tmp_path / "grid").exists()


def test_rows_average_over_seeds_and_show_dominance_only_where_logged():
    cells = [Cell("lora", s, {"overall": v}, 100, 40, [0.5, 0.7, 9.0], True, d)
             for s, v, d in ((0, 0.5, 0.10), (1, 0.7, 0.20))]
    cells.append(Cell("bitfit", 0, {"overall": 0.4}, 90, 30, [0.4], True, None))
    rows = aggregate(cells)
    assert [r.adapter for r in rows] == ["lora", "bitfit"]
    mean, std = rows[0].metrics["overall"]
    assert mean == pytest.approx(0.6) and std == pytest.approx(0.1414, abs=1e-4)
    assert rows[0].step_time == pytest.approx(0.7)
    lines = markdown(rows, "music_avqa").splitlines()
    assert lines[2] == "| lora | 0,1 | 60.0 ± 14.1 | 100 | 40 | 0.70 | yes | 15.0 ± 7.1 |"
    assert lines[3] == "| bitfit | 0 | 40.0 | 90 | 30 | 0.40 | yes | n/a |"
