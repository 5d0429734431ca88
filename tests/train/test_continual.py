"""Continual task sequences through `launch/train.py` on 2 DeepSpeed ranks: MUSIC-AVQA-format then AVE-format, with
DeLo (per-task pools) and with LoRA (sequential fine-tuning), the accuracy matrix and its summary numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from pipeline.eval import BENCHMARKS
from tests.train.conftest import REPO, common_overrides, metrics, run_train


def continual_config(tmp_path: Path, bench_data: dict) -> Path:
    """The demo's continual recipe with the tasks' eval sets pointed at the test's synthetic benchmark files."""
    cfg = yaml.safe_load((REPO / "configs/demo/continual.yaml").read_text())
    for task in cfg["continual"]["tasks"]:
        task["eval"]["data"] = bench_data[task["eval"]["bench"]][1]
    path = tmp_path / "continual.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def overrides(train_data: dict, stage1_run: Path, out: Path, **extra) -> list[str]:
    return common_overrides(train_data, out, stage1_run=stage1_run, max_steps=2, **{
        "data.micro_batch_size": 2, "data.num_workers": 0, "continual.max_new_tokens": 4, **extra})


def check_matrix(out: Path) -> dict:
    """continual.json agrees with the per-task metrics files, and A and F with a hand computation from it."""
    result = json.loads((out / "continual.json").read_text())
    assert result["tasks"] == ["music_avqa", "ave"]
    a = result["matrix"]
    assert len(a) == 2 and a[0][1] is None and all(isinstance(v, float) for v in (a[0][0], a[1][0], a[1][1]))
    for i, j, bench in ((0, 0, "music_avqa"), (1, 0, "music_avqa"), (1, 1, "ave")):
        task = out / "eval" / f"after{i}" / bench
        assert (task / "predictions.jsonl").is_file()
        stored = json.loads((task / "metrics.json").read_text())["metrics"]["complete"]
        assert a[i][j] == BENCHMARKS[bench].headline(stored)
    assert result["average_accuracy"] == pytest.approx((a[1][0] + a[1][1]) / 2)
    assert result["average_forgetting"] == pytest.approx(a[0][0] - a[1][0])
    assert result["average_accuracy_after_task"][0] == pytest.approx(a[0][0])
    assert "| 1: ave |" in (out / "continual.md").read_text()
    return result


@pytest.mark.slow
def test_delo_keeps_the_first_tasks_pools_while_learning_the_second(train_data, stage1_run, bench_data, tmp_path):
    out = tmp_path / "delo"
    run_train(continual_config(tmp_path, bench_data), overrides(train_data, stage1_run, out))
    check_matrix(out)
    first = load_file(out / "task0-music_avqa" / "final" / "trainables.safetensors")
    second = load_file(out / "task1-ave" / "final" / "trainables.safetensors")
    task0 = [k for k in first if k.rsplit(".", 1)[-1] in ("pool_a0", "pool_b0", "router0")]
    task1 = [k for k in first if k.rsplit(".", 1)[-1] in ("pool_a1", "pool_b1", "router1")]
    assert task0 and task1
    assert all((first[k] == second[k]).all() for k in task0)          # frozen while task 1 trained
    assert any((first[k] != second[k]).any() for k in task1)          # task 1's pools did train
    keys = [k for k in second if k.endswith("key_seen")]
    assert keys and all(second[k].tolist() == [True, True] for k in keys)  # a task key per task for inference
    assert not json.loads((out / "task0-music_avqa" / "shipped" / "merge.json").read_text())["merged"]


@pytest.mark.slow
def test_lora_sequence_under_zero3_with_every_sample_missing_audio_and_resume(train_data, stage1_run, bench_data,
                                                                               tmp_path):
    """LoRA fine-tunes one adapter through both tasks. Every training sample loses its audio (missing.rate=1, drop),
    so every batch lacks audio on both ranks: ZeRO-3 must still gather the audio tower's parameters in step."""
    out = tmp_path / "lora"
    config = continual_config(tmp_path, bench_data)
    args = overrides(train_data, stage1_run, out, **{"adapter.name": "lora", "deepspeed": REPO / "configs/ds/zero3.json",
                                                     "missing.rate": 1.0, "missing.type": "audio"})
    run_train(config, args)
    result = check_matrix(out)
    for task in ("task0-music_avqa", "task1-ave"):
        report = json.loads((out / task / "data_report.json").read_text())
        assert report["missing_modality"]["audio"] >= 2 * 2 * 2  # max_steps x micro batch x ranks, all without audio
        assert json.loads((out / task / "shipped" / "merge.json").read_text())["merged"]
    first = load_file(out / "task0-music_avqa" / "final" / "trainables.safetensors")
    second = load_file(out / "task1-ave" / "final" / "trainables.safetensors")
    lora = [k for k in first if k.endswith(("lora_A", "lora_B"))]
    assert lora and any((first[k] != second[k]).any() for k in lora)  # the same adapter kept training

    # re-running resumes: nothing is retrained, a lost evaluation is redone, the matrix is the same
    steps = [metrics(out / t) for t in ("task0-music_avqa", "task1-ave")]
    (out / "continual.json").unlink()
    shutil.rmtree(out / "eval" / "after1" / "music_avqa")
    run_train(config, args)
    assert [metrics(out / t) for t in ("task0-music_avqa", "task1-ave")] == steps
    assert json.loads((out / "continual.json").read_text()) == result


def test_bad_continual_settings_fail_before_training(train_data, stage1_run, bench_data, tmp_path, capsys):
    from launch.train import main

    config = continual_config(tmp_path, bench_data)
    base = overrides(train_data, stage1_run, tmp_path / "bad")
    assert main(["--config", str(config), *base, "adapter.options.tasks=1"]) == 2
    assert "adapter.options.tasks=1 task slots for 2 continual tasks" in capsys.readouterr().err
    bad_eval = yaml.safe_load(config.read_text())
    bad_eval["continual"]["tasks"][1]["eval"]["data"] = str(tmp_path / "nowhere.json")
    config.write_text(yaml.safe_dump(bad_eval))
    assert main(["--config", str(config), *base]) == 2
    err = capsys.readouterr().err
    assert "nowhere.json" in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()


def test_average_accuracy_and_forgetting_follow_the_standard_definitions():
    from pipeline.continual import summarize

    a = [[0.8, None, None], [0.6, 0.7, None], [0.7, 0.4, 0.9]]
    s = summarize(a)
    assert s["average_accuracy"] == pytest.approx((0.7 + 0.4 + 0.9) / 3)
    # task 0: best before the last task 0.8, now 0.7; task 1: best 0.7, now 0.4
    assert s["average_forgetting"] == pytest.approx(((0.8 - 0.7) + (0.7 - 0.4)) / 2)
    assert s["average_accuracy_after_task"] == pytest.approx([0.8, 0.65, 2.0 / 3])
    assert s["average_forgetting_after_task"] == pytest.approx([0.0, 0.2, 0.2])
