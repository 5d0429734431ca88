"""metrics.json names the weights an evaluation ran: a merged checkpoint, itself published as a Hub repo, built from
base components named by Hub id, all from the offline cache."""

from __future__ import annotations

import json

from pipeline.adapters import AdapterConfig
from pipeline.eval import runner
from pipeline.merge import merge_run
from pipeline.model.hub import pin
from tests.conftest import put_in_hub_cache
from tests.merge.conftest import make_run


def test_metrics_name_the_checkpoint_and_its_base_snapshots(offline_cache, tiny_model_config, bench_data, tmp_path):
    commits = offline_cache["commits"]
    config = tiny_model_config("llama", llm="tiny/llm", vision="tiny/vision", audio="tiny/audio")
    run, _ = make_run(tmp_path / "run", config, AdapterConfig(name="lora", rank=4, scope=["llm"]))
    merge_run(run, tmp_path / "merged")
    commit = put_in_hub_cache(offline_cache["cache"], "tiny/merged-provenance", tmp_path / "merged")  # its own repo

    args = ["--bench", "pope", *bench_data["pope"], "--max-new-tokens", "2"]
    assert runner.main([*args, "--model", "tiny/merged-provenance", "--out", str(tmp_path / "eval")]) == 0
    model = json.loads((tmp_path / "eval" / "metrics.json").read_text())["model"]
    snapshot = offline_cache["cache"] / "models--tiny--merged-provenance" / "snapshots" / commit
    assert model["ref"] == f"tiny/merged-provenance@{commit}" and model["snapshot"] == commit
    assert model["path"] == str(snapshot) and model["source_run"] == str(run.resolve())
    assert model["adapter"] == "lora" and model["merged"] is True
    assert model["base"] == {"llm": pin("tiny/llm", "llm"), "vision": pin("tiny/vision", "vision"),
                             "audio": pin("tiny/audio", "audio"), "tokenizer": None}
    assert model["snapshots"] == {part: commits[f"tiny/{part}"] for part in ("llm", "vision", "audio")}

    # scoring a predictions file ran no model: nothing to name
    predictions = tmp_path / "eval" / "predictions.jsonl"
    assert runner.main([*args, "--predictions", str(predictions), "--out", str(tmp_path / "rescored")]) == 0
    assert "model" not in json.loads((tmp_path / "rescored" / "metrics.json").read_text())
