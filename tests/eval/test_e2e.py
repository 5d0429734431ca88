"""End to end on a tiny checkpoint: every benchmark in one process and on 2 ranks (torchrun, gloo) gives the same
predictions and metrics, and scoring the written predictions file reproduces the metrics without a model."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.eval.runner import main
from tests.eval.conftest import REPO

BENCHES = ("mmbench", "pope", "music_avqa", "ave", "mme")
# batch 3: the two ranks get different numbers of batches; MUSIC-AVQA also runs the missing-modality conditions
COMMON = ["--max-new-tokens", "4", "--batch-size", "3"]
EXTRA = {"music_avqa": ["--missing", "both", "--missing-rate", "0.25", "--seed", "1"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def argv(bench: str, data: dict, checkpoint, out) -> list[str]:
    return ["--model", str(checkpoint), "--bench", bench, *data[bench], "--out", str(out / bench), *COMMON,
            *EXTRA.get(bench, [])]


@pytest.fixture(scope="module")
def runs(bench_data, checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-runs")
    for bench in BENCHES:
        assert main(argv(bench, bench_data, checkpoint, root / "single")) == 0
    plan = root / "runs.json"
    plan.write_text(json.dumps([argv(bench, bench_data, checkpoint, root / "ranks") for bench in BENCHES]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "tests/eval/multirank_entry.py", str(plan)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"2-rank eval failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return root / "single", root / "ranks", bench_data


def read(out, bench: str) -> tuple[list[dict], dict]:
    lines = [json.loads(line) for line in (out / bench / "predictions.jsonl").read_text().splitlines()]
    return lines, json.loads((out / bench / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("bench", BENCHES)
def test_one_process_and_two_ranks_agree(runs, bench):
    single, ranks, _ = runs
    assert read(single, bench) == read(ranks, bench)
    assert (single / bench / "results.md").read_text() == (ranks / bench / "results.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("bench", BENCHES)
def test_scoring_a_predictions_file_reproduces_the_metrics(runs, bench, checkpoint, tmp_path):
    single, _, data = runs
    assert main(["--bench", bench, *data[bench], "--predictions", str(single / bench / "predictions.jsonl"),
                 "--out", str(tmp_path / bench)]) == 0
    scored_lines, scored = read(tmp_path, bench)
    model_lines, model_run = read(single, bench)
    assert "model" not in scored  # no model ran: nothing to name
    assert model_run.pop("model")["path"] == str(Path(checkpoint).resolve())  # the model run names its weights
    assert (scored_lines, scored) == (model_lines, model_run)


@pytest.mark.slow
def test_outputs_and_conditions(runs):
    single, _, _ = runs
    lines, metrics = read(single, "music_avqa")
    assert metrics["items"] == {"complete": 8, "audio-missing": 4, "visual-missing": 4}   # 16 questions, 25 % each
    assert sum(line.get("condition") == "audio-missing" for line in lines) == 4
    table = (single / "music_avqa" / "results.md").read_text()
    assert "| metric | complete (n=8) | audio-missing (n=4) | visual-missing (n=4) |" in table
    lines, metrics = read(single, "mmbench")
    assert [line.keys() for line in lines[:1]] == [{"index", "round", "text"}]
    assert 0 <= metrics["metrics"]["complete"]["overall"] <= 1
    lines, _ = read(single, "ave")
    assert all(line.keys() == {"video_id", "text"} for line in lines)
