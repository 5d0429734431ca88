"""Stage 1, stage 2, merge and eval with every model named by a Hub id, from a local cache, with HF_HUB_OFFLINE=1."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import put_in_hub_cache
from tests.train.conftest import REPO, launch_env, train_cmd

IDS = ["model.llm=tiny/llm", "model.vision=tiny/vision", "model.audio=tiny/audio"]


def run(cmd: list[str], env: dict, code: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == code, f"{cmd[:3]} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_stages_merge_and_eval_by_hub_id_offline(hub_cache, train_data, bench_data, tmp_path):
    env = {**launch_env(), "HF_HUB_CACHE": str(hub_cache["cache"]), "HF_HUB_OFFLINE": "1"}
    pinned = {f"tiny/{p}": f"tiny/{p}@{hub_cache['commits'][f'tiny/{p}']}" for p in ("llm", "vision", "audio")}
    common = [*IDS, f"data.root={train_data['shards']}", "data.micro_batch_size=2", "data.shuffle_buffer=4",
              "max_steps=2", "train.epochs=1"]
    stage1, stage2, merged = tmp_path / "stage1", tmp_path / "stage2", tmp_path / "merged"
    run(train_cmd(REPO / "configs/demo/stage1.yaml", [*common, f"output_dir={stage1}"], nproc=1), env)
    run(train_cmd(REPO / "configs/demo/stage2.yaml", [*common, f"output_dir={stage2}", f"stage1_run={stage1}",
                                                        "adapter.name=lora"], nproc=1), env)
    for run_dir in (stage1, stage2):  # the run says which snapshot it used
        model = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]
        assert [model["llm"], model["vision"], model["audio"]] == list(pinned.values())

    run([sys.executable, "launch/merge.py", "--run", str(stage2), "--out", str(merged)], env)
    manifest = json.loads((merged / "merge.json").read_text())
    assert manifest["base"] == {"llm": pinned["tiny/llm"], "vision": pinned["tiny/vision"],
                                "audio": pinned["tiny/audio"], "tokenizer": None}

    # the merged checkpoint, published as a repo, evaluated by its id
    put_in_hub_cache(hub_cache["cache"], "tiny/merged", merged)
    run([sys.executable, "launch/eval.py", "--model", "tiny/merged", "--bench", "music_avqa", *bench_data["music_avqa"],
         "--max-new-tokens", "4", "--out", str(tmp_path / "eval")], env)
    assert (tmp_path / "eval" / "predictions.jsonl").read_text().count("\n") == 16  # the 16 test questions
    assert "overall" in json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]["complete"]


def test_an_id_neither_cached_nor_downloadable_stops_before_any_work(hub_cache, tmp_path):
    env = {**launch_env(), "HF_HUB_CACHE": str(hub_cache["cache"]), "HF_HUB_OFFLINE": "1"}
    config = REPO / "configs/demo/stage1.yaml"
    proc = run([sys.executable, "launch/train.py", "--config", str(config), *IDS, "model.llm=tiny/llama-7b@v2",
                f"output_dir={tmp_path / 'run'}"], env, code=2)
    assert proc.stderr.strip() == (
        f"error: {config}: 'model.llm': tiny/llama-7b@v2 is neither a local directory nor in the Hugging Face cache "
        f"({hub_cache['cache']}) and HF_HUB_OFFLINE=1 forbids downloading it; fetch it with: "
        "hf download tiny/llama-7b --revision v2")
    assert not (tmp_path / "run").exists()
    proc = run([sys.executable, "launch/eval.py", "--model", "tiny/absent", "--bench", "pope", "--data", str(tmp_path)],
               env, code=2)
    assert "hf download tiny/absent" in proc.stderr
