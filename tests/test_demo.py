"""The main job end to end (the README's first command, minus the set-up): each of the three benchmarks must beat its
media-blind baselines by a clear margin (MUSIC-AVQA: the majority answer and the per-question-type prior; POPE: one
answer throughout, in accuracy and F1; MMBench: chance, one letter, one option text per category); it writes the
results picture, and prints no warning or traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end_and_learns_from_the_media(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "launch.demo", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    # margins: below the smallest of seeds 0-2 (README's demo section): MUSIC-AVQA +23.4 and +10.9, POPE accuracy
    # +25.0 and F1 +9.2, MMBench +31.2 points
    assert result["music_avqa"] >= result["majority"] + 0.15, result
    assert result["music_avqa"] >= result["type_prior"] + 0.08, result
    assert result["pope_accuracy"] >= result["pope_one_answer_accuracy"] + 0.15, result
    assert result["pope_f1"] >= result["pope_one_answer_f1"] + 0.05, result
    assert result["mmbench"] >= result["mmbench_best_option_text"] + 0.20, result
    # media-blind baselines of the synthetic test files (balanced answers; CircularEval defeats any fixed letter)
    assert result["pope_one_answer_accuracy"] == 0.5 and result["mmbench_best_letter"] == 0.0, result
    assert abs(result["mmbench_chance"] - 0.25**4) < 1e-9 and 0.66 < result["pope_one_answer_f1"] < 0.67, result
    assert result["mmbench_best_option_text"] == 0.25, result
    for path in ("stage1/config.yaml", "stage2/ds_config.json", "stage2/metrics.jsonl", "stage2/loss.png",
                 "stage2/final/trainables.safetensors", "merged/llm/config.json", "merged/merge.json",
                 "eval/music_avqa/predictions.jsonl", "eval/pope/metrics.json", "eval/mmbench/results.md",
                 "shards/image_qa/train/llava-train.index.json", "results.md"):
        assert (out / path).is_file(), path
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "stage2" / "tb").iterdir())
    for row in ("| MUSIC-AVQA (synthetic) | overall accuracy |", "| POPE (synthetic) | accuracy / F1 |",
                "| MMBench (synthetic) | CircularEval overall |"):
        assert row in proc.stdout, row
    assert f"Picture: {out / 'results.png'}" in proc.stdout and str(out / "stage2" / "loss.png") in proc.stdout
    for noise in ("Warning", "Traceback", "requires torchvision"):
        assert noise not in proc.stdout + proc.stderr, noise
